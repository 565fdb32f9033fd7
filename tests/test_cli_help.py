"""`dpvr ... --help`: answered without torch, every (sub)command described, defaults stated once in plain words."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys

import pytest

from dpvr.cli import build_parser
from dpvr.cli.help import plain, plain_value


def _commands(parser: argparse.ArgumentParser, prefix=()) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    out = [(prefix, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _commands(sub, prefix + (name,))
    return out


COMMANDS = _commands(build_parser())


def test_every_command_is_listed():
    paths = {" ".join(p) for p, _ in COMMANDS}
    assert {"demo", "data generate", "tiny build", "tiny export", "bench latency", "train", "eval", "sweep"} <= paths


def test_help_of_every_command_imports_neither_torch_nor_transformers():
    """Each command's --help in one fresh interpreter; afterwards the heavy libraries are still unloaded."""
    paths = [list(p) for p, _ in COMMANDS]
    code = (
        "import contextlib, io, json, sys\n"
        "from dpvr.cli import main\n"
        f"for path in {paths!r}:\n"
        "    buf = io.StringIO()\n"
        "    with contextlib.redirect_stdout(buf):\n"
        "        try:\n"
        "            main(path + ['--help'])\n"
        "        except SystemExit:\n"
        "            pass\n"
        "    assert 'usage: dpvr' in buf.getvalue(), path\n"
        "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'numpy', 'matplotlib', 'PIL') if m in sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize("path,parser", COMMANDS, ids=[" ".join(p) or "dpvr" for p, _ in COMMANDS])
def test_help_text_is_plain_and_states_defaults_once(path, parser):
    assert parser.description, f"`dpvr {' '.join(path)}` has no description"
    text = parser.format_help()
    for bad in ("(default: None)", "(default: [", "(default: (", "(default: False)", "``", ":func:", ":mod:",
                "(default: <"):
        assert bad not in text, f"`dpvr {' '.join(path)} --help` shows {bad!r}"
    for action in parser._actions:
        if action.help in (None, argparse.SUPPRESS):
            continue
        shown = parser._get_formatter()._expand_help(action) if action.option_strings else action.help
        assert len(re.findall(r"\bdefault\b", shown, re.I)) <= 1, f"{action.option_strings}: {shown!r}"


def test_plain_text_and_values():
    assert plain("see :func:`dpvr.evaluation.run_eval` and ``dpvr eval``; `x`. Example::") == \
        "see dpvr.evaluation.run_eval and dpvr eval; x. Example:"
    assert plain_value([0, 1]) == "0,1" and plain_value((0, 4)) == "0/4" and plain_value("a") == "a"


def test_one_flag_name_per_meaning_old_names_still_parse():
    parser = build_parser()
    for command in (["train", "--out", "o"], ["sweep", "--grid", "split=4", "--out", "o"],
                    ["eval", "--method", "vanilla", "--out", "o"], ["demo"], ["analyze"], ["data", "generate", "--out", "o"],
                    ["tiny", "build", "--out", "o"], ["bench", "latency"]):
        assert parser.parse_args(command + ["--quiet"]).quiet is True
        assert parser.parse_args(command + ["--no-progress"]).quiet is True
        assert parser.parse_args(command).quiet is False
    for command in (["eval", "--method", "vanilla", "--out", "o"], ["sweep", "--grid", "split=4", "--out", "o"], ["demo"]):
        assert parser.parse_args(command + ["--limit", "5"]).limit == 5
        assert parser.parse_args(command + ["--eval-limit", "7"]).limit == 7
        args = parser.parse_args(command + ["--families", "pope,mc", "count"])
        assert args.families == ["pope", "mc", "count"]
        assert parser.parse_args(command + ["--families", "pope", "mc"]).families == ["pope", "mc"]


def test_old_names_are_hidden_from_help():
    for path, parser in COMMANDS:
        text = parser.format_help()
        assert "--no-progress" not in text and "--eval-limit" not in text, " ".join(path)
