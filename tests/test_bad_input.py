"""The bad-input corpus (tests/data/bad/) through every reading command: exit 2, one line, no traceback, no --out left.

Commands run in-process through ``dpvr.cli.main`` (a few in a subprocess, to see the real stderr and
``DPVR_DEBUG=1``). Each case is a file of the corpus (see ``tests/data/bad/build.py``); cases too big to
commit (a 10**6-character turn) and symlinks pointing out of the data folder are made here. Property-based
cases (hypothesis) check the schemas themselves: any JSON value is either accepted or refused with
``BadInput``, never another exception.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpvr.cli import main
from dpvr.validation import BadInput, validate_adapter_config, validate_benchmark_record, validate_training_record

BAD = Path(__file__).parent / "data" / "bad"
TRAIN_ONLY = set((BAD / "records" / "train_only.txt").read_text().split())
RECORD_FILES = sorted(p.name for p in (BAD / "records").iterdir() if p.suffix in (".json", ".jsonl"))
BENCH_FILES = sorted(p.name for p in (BAD / "bench").iterdir())
ADAPTER_FILES = sorted(p.name for p in (BAD / "adapter").iterdir())
GRIDS = [line for line in (BAD / "sweep" / "grids.txt").read_text().splitlines() if line.strip()]
SEEN: dict[str, int] = {"cases": 0, "tracebacks": 0}


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("DPVR_DEBUG", raising=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A copy of the corpus plus the generated cases: a huge turn, symlinks out of the folder."""
    root = tmp_path_factory.mktemp("corpus")
    folder = root / "bad"
    shutil.copytree(BAD, folder)
    outside = root / "outside.png"
    shutil.copy(BAD / "images" / "good.png", outside)
    (folder / "images" / "link_out.png").symlink_to(outside)
    (folder / "images" / "link_in.png").symlink_to(folder / "images" / "good.png")
    turns = [{"from": "human", "value": "<image>\n" + "x" * 10**6}, {"from": "gpt", "value": "y"}]
    good = {"id": "r0", "image": "images/good.png", "conversations": turns}
    (folder / "records" / "huge_turn.json").write_text(json.dumps([good]))
    (folder / "records" / "image_symlink_outside.json").write_text(json.dumps([good | {
        "image": "images/link_out.png", "conversations": [turns[0] | {"value": "<image>\nhi"}, turns[1]]}]))
    bench = {"id": "b0", "image": "images/good.png", "question": "Is there a circle?", "answer": "yes"}
    (folder / "bench" / "huge_question.jsonl").write_text(json.dumps(bench | {"question": "q" * 10**6}) + "\n")
    (folder / "bench" / "image_symlink_outside.jsonl").write_text(json.dumps(bench | {"image": "images/link_out.png"}) + "\n")
    return folder


def check_refused(command: str, rc: int, err: str, out: Path) -> str:
    """Exit 2, exactly one error line, no traceback, no output folder left behind; returns the line."""
    SEEN["cases"] += 1
    SEEN["tracebacks"] += "Traceback" in err
    assert "Traceback" not in err, err[-2000:]
    assert rc == 2, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith(f"dpvr {command}: error:")]
    assert len(lines) == 1, err[-2000:]
    assert not out.exists(), f"{out} left behind"
    return lines[0]


def run(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(argv)
    return rc, capsys.readouterr().err


def train_argv(tiny_dir: Path, data: Path, folder: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--out", str(out), "--model", str(tiny_dir / "model"), "--data", str(data), "--image-folder",
            str(folder), "--split", "2", "--max-steps", "1", "--batch-size", "2", "--eval-samples", "1",
            "--no-progress", *extra]


# --------------------------------------------------------------------------- training records: train, analyze

@pytest.mark.parametrize("name", RECORD_FILES + ["huge_turn.json", "image_symlink_outside.json"])
def test_bad_training_file_is_one_line_in_train_and_analyze(name, corpus, tiny_dir, tmp_path, capsys):
    data = corpus / "records" / name
    rc, err = run(train_argv(tiny_dir, data, corpus, tmp_path / "train-out"), capsys)
    line = check_refused("train", rc, err, tmp_path / "train-out")
    if name == "huge_turn.json":
        assert "before tokenising" in line
    if name in TRAIN_ONLY:  # e.g. no assistant turn: the analysis reads the last position instead
        return
    rc, err = run(["analyze", "--model", str(tiny_dir / "model"), "--data", str(data), "--image-folder", str(corpus),
                   "--out", str(tmp_path / "an-out"), "--num-samples", "2", "--quiet", "--no-plot"], capsys)
    check_refused("analyze", rc, err, tmp_path / "an-out")


def test_messages_name_the_record_and_the_field(corpus, tiny_dir, tmp_path, capsys):
    expected = {
        "conversations_null.json": "record 0 (id 'r0'): field 'conversations' must be a valid list (got None)",
        "value_int.json": "field 'conversations[1].value' must be a valid string (got 5)",
        "image_int.json": "field 'image' must be a relative image path",
        "one_bad_among_good.json": "record 1 (id 'bad')",
        "image_not_an_image.json": "is not an image Pillow can read",
        "image_bomb_20000x20000.json": "is too large to decode safely",
        "image_escapes_dotdot.json": "outside",
        "image_absolute.json": "is absolute",
        "image_symlink_outside.json": "outside",
        "deeply_nested.json": "nested too deeply",
        "not_json.json": "is not valid JSON",
    }
    for name, piece in expected.items():
        rc, err = run(train_argv(tiny_dir, corpus / "records" / name, corpus, tmp_path / "o"), capsys)
        assert piece in check_refused("train", rc, err, tmp_path / "o"), name


def test_skip_bad_skips_and_counts_what_the_schema_and_the_image_check_refuse(corpus, tiny_dir, tmp_path, capsys):
    good = json.loads((corpus / "records" / "one_bad_among_good.json").read_text())[0]
    records = [good | {"id": f"g{i}"} for i in range(4)]
    bad = [good | {"id": "notimg", "image": "images/not_an_image.png"}, good | {"id": "bomb", "image": "images/bomb.png"},
           good | {"id": "null", "conversations": None}, good | {"id": "out", "image": "../../../../etc/passwd"}]
    data, held = tmp_path / "mixed.json", tmp_path / "held.json"
    data.write_text(json.dumps(records + bad))
    held.write_text(json.dumps(records[:1]))
    rc, err = run(train_argv(tiny_dir, data, corpus, tmp_path / "o", "--skip-bad", "--eval-data", str(held)), capsys)
    assert rc == 0, err[-2000:]
    result = json.loads((tmp_path / "o" / "result.json").read_text())
    assert result["train_records"] == 4 and result["skipped_records"] == 4


def test_outside_paths_are_allowed_only_when_asked(corpus, tiny_dir, tmp_path, capsys):
    data = corpus / "records" / "image_symlink_outside.json"
    rc, err = run(train_argv(tiny_dir, data, corpus, tmp_path / "o", "--allow-outside-paths"), capsys)
    assert rc == 0, err[-2000:]
    inside = tmp_path / "inside.json"
    inside.write_text(data.read_text().replace("link_out.png", "link_in.png"))
    rc, err = run(train_argv(tiny_dir, inside, corpus, tmp_path / "o2"), capsys)
    assert rc == 0, err[-2000:]  # a symlink that stays inside the folder is fine


def test_text_only_and_assistant_only_records_train_with_zero_side_gradient(tiny_dir, tmp_path, capsys):
    records = [{"id": "a", "conversations": [{"from": "gpt", "value": "hello there"}]},
               {"id": "t", "conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "hi"}]}]
    data = tmp_path / "text.json"
    data.write_text(json.dumps(records))
    rc, err = run(train_argv(tiny_dir, data, tmp_path, tmp_path / "o"), capsys)
    assert rc == 0, err[-2000:]
    result = json.loads((tmp_path / "o" / "result.json").read_text())
    assert result["global_steps"] == 1 and result["first_step_gradient"]["nonzero_grad_elements"] == 0
    assert (tmp_path / "o" / "adapter" / "adapter_model.safetensors").is_file()


# --------------------------------------------------------------------------- benchmark records: eval

@pytest.mark.parametrize("name", BENCH_FILES + ["huge_question.jsonl", "image_symlink_outside.jsonl"])
def test_bad_benchmark_file_is_one_line_in_eval(name, corpus, tiny_dir, tmp_path, capsys):
    bench = tmp_path / "bench"
    shutil.copytree(corpus / "images", bench / "images", symlinks=True)
    shutil.copy(corpus / "bench" / name, bench / "pope.jsonl")
    rc, err = run(["eval", "--model", str(tiny_dir / "model"), "--benchmark", str(bench), "--families", "pope",
                   "--method", "vanilla", "--out", str(tmp_path / "o"), "--device", "cpu", "--quiet"], capsys)
    check_refused("eval", rc, err, tmp_path / "o")


# --------------------------------------------------------------------------- adapter configs: adapter loading

def _patch(meta: dict, patch: dict) -> dict:
    for key, value in patch.items():
        if value == "__delete__":
            meta.pop(key, None)
        elif isinstance(value, dict) and isinstance(meta.get(key), dict):
            _patch(meta[key], value)
        else:
            meta[key] = value
    return meta


@pytest.fixture(scope="module")
def saved_adapter(tiny_dir, tmp_path_factory) -> Path:
    from transformers import LlavaForConditionalGeneration

    import dpvr

    base = LlavaForConditionalGeneration.from_pretrained(tiny_dir / "model")
    path = tmp_path_factory.mktemp("adapter") / "adapter"
    dpvr.get_dpvr_model(base, dpvr.DPVRConfig(variant="lf", split=2)).save_pretrained(path)
    return path


@pytest.mark.parametrize("name", ADAPTER_FILES)
def test_bad_adapter_config_is_one_line_when_loaded(name, saved_adapter, tiny_dir, tmp_path, capsys):
    from transformers import LlavaForConditionalGeneration

    import dpvr

    adapter = tmp_path / "adapter"
    shutil.copytree(saved_adapter, adapter)
    case = BAD / "adapter" / name
    config = adapter / "dpvr_config.json"
    if name.endswith(".patch.json"):
        config.write_text(json.dumps(_patch(json.loads(config.read_text()), json.loads(case.read_text()))))
    else:
        config.write_bytes(case.read_bytes())
    base = LlavaForConditionalGeneration.from_pretrained(tiny_dir / "model")
    with pytest.raises(ValueError):  # the library: a ValueError with the message, never another exception
        dpvr.DPVRModel.from_pretrained(base, adapter)
    bench = tmp_path / "bench"
    shutil.copytree(BAD / "images", bench / "images")
    (bench / "pope.jsonl").write_text(json.dumps({"id": "b0", "image": "images/good.png", "question": "Is there a circle?",
                                                  "answer": "yes"}) + "\n")
    rc, err = run(["eval", "--model", str(tiny_dir / "model"), "--benchmark", str(bench), "--method", f"adapter:{adapter}",
                   "--out", str(tmp_path / "o"), "--device", "cpu", "--quiet"], capsys)
    check_refused("eval", rc, err, tmp_path / "o")


# --------------------------------------------------------------------------- sweep grids, data generate

@pytest.mark.parametrize("line", GRIDS)
def test_bad_sweep_arguments_are_one_line(line, corpus, tiny_dir, tmp_path, capsys):
    args = shlex.split(line.replace("sweep/", f"{corpus}/sweep/"))
    rc, err = run(["sweep", *args, "--out", str(tmp_path / "o"), "--model", str(tiny_dir / "model"), "--data",
                   str(tiny_dir / "data" / "train.json"), "--benchmark", str(tiny_dir / "data"), "--max-steps", "1",
                   "--no-reference", "--no-progress"], capsys)
    check_refused("sweep", rc, err, tmp_path / "o")


@pytest.mark.parametrize("extra", [["--num-train", "-1"], ["--num-train", "0"], ["--num-test-per-family", "0"],
                                   ["--num-test-per-family", "-5"], ["--test-wording", "mme"]])
def test_bad_data_generate_arguments_are_one_line(extra, tmp_path, capsys):
    rc, err = run(["data", "generate", "--out", str(tmp_path / "o"), "--quiet", *extra], capsys)
    check_refused("data", rc, err, tmp_path / "o")


def test_data_generate_into_a_file_is_one_line_and_leaves_the_file(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for out in (afile, afile / "sub"):
        rc, err = run(["data", "generate", "--out", str(out), "--quiet", "--num-train", "10"], capsys)
        assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 2, err
    assert afile.read_text() == "mine"


# --------------------------------------------------------------------------- a real process: stderr and DPVR_DEBUG

def test_real_process_prints_one_line_and_debug_shows_the_traceback(corpus, tiny_dir, tmp_path, monkeypatch, capsys):
    argv = train_argv(tiny_dir, corpus / "records" / "conversations_null.json", corpus, tmp_path / "o")
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    env.pop("DPVR_DEBUG", None)
    plain = subprocess.run([sys.executable, "-m", "dpvr", *argv], env=env, capture_output=True, text=True, timeout=300)
    assert check_refused("train", plain.returncode, plain.stderr, tmp_path / "o")
    assert plain.stderr.strip().splitlines()[-1] == "(set DPVR_DEBUG=1 for the full traceback)"
    monkeypatch.setenv("DPVR_DEBUG", "1")
    with pytest.raises(BadInput, match="conversations"):  # the exception propagates: Python prints its traceback
        main(argv)
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- property-based: the schemas themselves

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                          max_size=3), max_leaves=12)
speakers = st.sampled_from(["human", "gpt", "user", "assistant", "system", "bot", ""]) | json_values
turn = st.fixed_dictionaries({}, optional={"from": speakers, "value": st.text(max_size=20) | json_values})
train_record = st.fixed_dictionaries({}, optional={
    "id": json_values, "image": st.sampled_from(["images/good.png", "", "../x.png"]) | json_values,
    "conversations": st.lists(turn | json_values, max_size=3) | json_values})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(train_record | json_values)
def test_any_json_training_record_is_accepted_or_refused_with_bad_input(record):
    try:
        validate_training_record(record, "record 0")
    except BadInput as err:
        assert "\n" not in str(err)
        return
    from dpvr.data.llava_format import record_to_messages

    record_to_messages(record)  # what the schema accepts, the template step can read


bench_record = st.fixed_dictionaries({}, optional={
    "id": json_values, "image": st.sampled_from(["images/good.png", " "]) | json_values,
    "question": st.text(max_size=10) | json_values, "answer": st.sampled_from(["A", "yes", "E"]) | json_values,
    "options": st.lists(st.text(max_size=4), max_size=4) | json_values, "category": json_values})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bench_record | json_values)
def test_any_json_benchmark_record_is_accepted_or_refused_with_bad_input(record):
    from dpvr.evaluation.metrics import score

    try:
        validate_benchmark_record(record, "pope.jsonl:1")
    except BadInput as err:
        assert "\n" not in str(err)
        return
    score(record, "A")  # an accepted record can be scored


config_fields = st.fixed_dictionaries({}, optional={
    "variant": st.sampled_from(["lf", "pc", "kv", "ideal", "vanilla", "fastv"]) | json_values,
    "split": st.integers(-2, 9) | json_values, "side_depth": st.integers(-1, 3) | json_values,
    "fusion_layers": st.lists(st.integers(-1, 9), max_size=3) | json_values,
    "num_fusion_layers": st.integers(-1, 3) | json_values, "fastv_k": st.integers(-1, 3) | json_values,
    "fastv_ratio": st.floats(-1, 2) | json_values, "side_init": st.sampled_from(["copy", "random"]) | json_values})
adapter_meta = st.fixed_dictionaries({}, optional={
    "format_version": st.just(1) | json_values, "dpvr_config": config_fields | json_values,
    "base_model": st.fixed_dictionaries({"fingerprint": st.dictionaries(st.text(max_size=4), st.integers())})
    | json_values})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(adapter_meta | json_values)
def test_any_adapter_config_is_accepted_or_refused_with_a_value_error(meta):
    from dpvr.config import DPVRConfig

    try:
        validate_adapter_config(meta, "dpvr_config.json")
    except BadInput as err:
        assert "\n" not in str(err)
        return
    try:
        DPVRConfig.from_dict(meta["dpvr_config"]).resolve(8)
    except ValueError:
        pass  # e.g. a fusion layer in the shallow stack: DPVRConfig's own checks, also one line


def test_corpus_size_and_no_traceback():
    """Runs last in this file: how many cases went through a command, and that none showed a traceback."""
    assert SEEN["tracebacks"] == 0
    print(f"bad-input cases through a command: {SEEN['cases']}, tracebacks: {SEEN['tracebacks']}")
