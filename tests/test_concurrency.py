"""Two processes on one --out: the second is refused in one line naming the first's PID; the first's output is intact."""

from __future__ import annotations

import hashlib
import json
import os
import time

import pytest
import torch

from dpvr.cli import main
from dpvr.outlock import lock_path
from outlock_helpers import hold_lock

COMMANDS = {
    "train": ["train", "--max-steps", "1"],
    "eval": ["eval", "--method", "vanilla", "--limit", "1"],
    "analyze": ["analyze", "--num-samples", "1"],
    "demo": ["demo", "--quick"],
    "data generate": ["data", "generate", "--num-train", "5", "--overwrite"],
    "tiny build": ["tiny", "build", "--quick", "--overwrite"],
}


def _tree(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_second_process_on_one_out_is_refused_naming_the_first(tmp_path, capsys, command):
    out = tmp_path / "out"
    out.mkdir()
    (out / "result.json").write_text('{"from": "the first run"}\n')  # what the first process has written so far
    before = _tree(out)
    with hold_lock(out) as pid:
        start = time.perf_counter()
        code = main(COMMANDS[command] + ["--out", str(out)])
        seconds = time.perf_counter() - start
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert f"is in use by another dpvr process (pid {pid}" in err[0] and "Traceback" not in "\n".join(err)
    assert _tree(out) == before  # nothing of the first run touched
    assert seconds < 30  # refused before any work


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_two_real_evals_on_one_out(tiny_dir, tmp_path):
    """Two `dpvr eval` at once (vanilla and vtw): the second is refused, the first's results are complete."""
    from dpvr.evaluation import EvalSettings, run_eval

    out = tmp_path / "eval"
    settings = EvalSettings(benchmark=str(tiny_dir / "data"), families=["pope"], limit=3, max_new_tokens=1,
                            device="cpu", progress=False)
    torch.set_num_threads(1)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child: the first process
        code = 1
        try:
            run_eval(["vanilla"], out=out, model=str(tiny_dir / "model"), settings=settings)
            code = 0
        finally:
            os._exit(code)
    deadline = time.time() + 60
    while not (lock_path(out).exists() and lock_path(out).read_text().strip()) and time.time() < deadline:
        time.sleep(0.01)
    with pytest.raises(ValueError, match=f"in use by another dpvr process \\(pid {pid}"):
        run_eval(["vtw:k=2"], out=out, model=str(tiny_dir / "model"), settings=settings)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["methods"]) == ["vanilla"] and sorted(p.name for p in (out / "predictions").iterdir()) == [
        "vanilla.jsonl"]
