"""The lmms-eval plugin (extra `dpvr[eval]`): entry point, same figures as `dpvr eval`, multi-round, loglikelihood.

Skipped unless lmms-eval is installed; CI runs it in a separate environment (see the report of issue 5).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

lmms_eval = pytest.importorskip("lmms_eval")

import evalkit  # noqa: E402
from dpvr.evaluation import EvalSettings, run_eval  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return evalkit.build(tmp_path_factory.mktemp("lmmstiny"))


def test_entry_point_registers_the_dpvr_model():
    from lmms_eval.models import get_model

    from dpvr.lmms_eval_plugin.model import DPVRLmms

    assert get_model("dpvr") is DPVRLmms


def test_lmms_eval_gives_the_figures_of_dpvr_eval(tiny, tmp_path, monkeypatch):
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from dpvr.lmms_eval_plugin import TASKS_DIR

    monkeypatch.setenv("DPVR_BENCHMARK", str(tiny / "data"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    tasks = TaskManager("WARNING", include_path=str(TASKS_DIR), include_defaults=False)
    got = simple_evaluate(model="dpvr", model_args=f"pretrained={tiny / 'model'},method=vanilla",
                          tasks=["dpvr_pope", "dpvr_mc"], batch_size=4, device="cpu", limit=6,
                          gen_kwargs="max_new_tokens=1", task_manager=tasks, log_samples=True, verbosity="WARNING")
    want = run_eval(["vanilla"], out=tmp_path / "ours", model=str(tiny / "model"),
                    settings=EvalSettings(benchmark=str(tiny / "data"), families=["pope", "mc"], limit=6,
                                          batch_size=4, max_new_tokens=1, device="cpu", progress=False))
    ours = want["methods"]["vanilla"]["families"]
    for metric in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
        assert got["results"]["dpvr_pope"][f"{metric},none"] == pytest.approx(ours["pope"][metric]), metric
    assert got["results"]["dpvr_mc"]["accuracy,none"] == pytest.approx(ours["mc"]["accuracy"])
    # and the same answer to every question
    rows = [json.loads(line) for line in (tmp_path / "ours" / "predictions" / "vanilla.jsonl").read_text().splitlines()]
    theirs = [s["filtered_resps"][0] for task in ("dpvr_pope", "dpvr_mc")
              for s in sorted(got["samples"][task], key=lambda s: s["doc_id"])]
    assert theirs == [r["prediction"].strip() for r in rows]


def _requests(*args_tuples):
    return [SimpleNamespace(args=a) for a in args_tuples]


def test_multi_round_and_loglikelihood(tiny):
    from PIL import Image

    from dpvr.lmms_eval_plugin.model import DPVRLmms

    records = [json.loads(line) for line in (tiny / "data" / "pope.jsonl").read_text().splitlines()[:3]]
    docs = [{"question": r["question"], "image": str(tiny / "data" / r["image"])} for r in records]
    lm = DPVRLmms(pretrained=str(tiny / "model"), method="vanilla", batch_size=2, max_new_tokens=1, device="cpu")
    lm.task_dict = {"t": {"test": docs}}

    def visual(doc):
        return [Image.open(doc["image"]).convert("RGB")]

    def follow_up(doc, previous_output, round_idx, previous_round_info):
        if round_idx == 1:  # ask again, text only, and remember the first answer
            return [], f"You said {previous_output[0]}. Is that right?", False, None, {"first": previous_output[0]}
        return None, None, True, None, None

    gen = {"max_new_tokens": 1}
    single = lm.generate_until(_requests(*[(d["question"], dict(gen), visual, i, "t", "test") for i, d in enumerate(docs)]))
    assert set(single) <= {"Yes", "No"}
    multi = lm.generate_until_multi_round(
        _requests(*[(d["question"], dict(gen), visual, follow_up, i, "t", "test") for i, d in enumerate(docs)]))
    assert [len(rounds) for rounds in multi] == [2, 2, 2]
    assert [rounds[0] for rounds in multi] == single  # round 0 is the plain answer
    # loglikelihood agrees with greedy generation: the generated answer is the greedy continuation and the likelier one
    other = {"Yes": "No", "No": "Yes"}
    lls = lm.loglikelihood(_requests(*[(d["question"], cont, visual, i, "t", "test")
                                       for i, d in enumerate(docs) for cont in (single[i], other[single[i]])]))
    for i in range(len(docs)):
        (lp_gen, greedy_gen), (lp_other, greedy_other) = lls[2 * i], lls[2 * i + 1]
        assert greedy_gen and not greedy_other
        assert lp_gen > lp_other


@pytest.fixture(scope="module")
def qwen(tmp_path_factory) -> Path:
    from family_dirs import build_qwen2_vl

    return build_qwen2_vl(tmp_path_factory.mktemp("lmmsqwen"))


def test_data_parallel_on_qwen2_vl_gives_the_figures_of_dpvr_eval(qwen, tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo), a Qwen2-VL through its own processor: each process answers
    its shard, lmms-eval merges them, and every answer is the one `dpvr eval` gives."""
    import os
    import subprocess
    import sys

    from dpvr.lmms_eval_plugin import TASKS_DIR

    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "DPVR_BENCHMARK": str(qwen / "data"),
                        "HF_DATASETS_CACHE": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1"}
    ddp_config = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "ddp.yaml"
    run = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ddp_config),
                          "--num_processes", "2", "--dynamo_backend", "no", "-m", "lmms_eval", "--model", "dpvr",
                          "--model_args", f"pretrained={qwen / 'model'},method=vanilla,device=cpu",
                          "--tasks", "dpvr_pope", "--include_path", str(TASKS_DIR), "--limit", "6", "--batch_size", "2",
                          "--gen_kwargs", "max_new_tokens=2", "--output_path", str(tmp_path / "lmms"), "--log_samples",
                          "--verbosity", "WARNING"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, (run.stdout[-2000:], run.stderr[-3000:])
    assert "2 processes, data parallel" in run.stdout
    results = sorted((tmp_path / "lmms").rglob("*_results.json"))
    samples = sorted((tmp_path / "lmms").rglob("*samples_dpvr_pope.jsonl"))
    assert len(results) == 1 and len(samples) == 1, sorted(p.name for p in (tmp_path / "lmms").rglob("*"))
    got = json.loads(results[0].read_text())["results"]["dpvr_pope"]
    rows = [json.loads(line) for line in samples[0].read_text().splitlines()]
    assert sorted(r["doc_id"] for r in rows) == list(range(6))  # both shards merged, each document once

    want = run_eval(["vanilla"], out=tmp_path / "ours", model=str(qwen / "model"),
                    settings=EvalSettings(benchmark=str(qwen / "data"), families=["pope"], limit=6, batch_size=2,
                                          max_new_tokens=2, device="cpu", progress=False))
    ours = [json.loads(line) for line in (tmp_path / "ours" / "predictions" / "vanilla.jsonl").read_text().splitlines()]
    # the samples file holds each filtered response as a string (the in-memory samples hold a list)
    theirs = [r["filtered_resps"] if isinstance(r["filtered_resps"], str) else r["filtered_resps"][0]
              for r in sorted(rows, key=lambda r: r["doc_id"])]
    assert theirs == [r["prediction"].strip() for r in ours]
    assert got["accuracy,none"] == pytest.approx(want["methods"]["vanilla"]["families"]["pope"]["accuracy"])


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory) -> Path:
    import family_dirs

    if not hasattr(family_dirs, "build_family"):  # the saved checkpoints of issue 26's families come with the tool tests
        pytest.skip("needs family_dirs.build_family (tiny saved checkpoints of the issue-26 families)")
    return family_dirs.build_family("gemma3", tmp_path_factory.mktemp("lmmsgemma3"))


def test_plugin_on_gemma3_gives_the_answers_of_dpvr_eval(gemma3, tmp_path, monkeypatch):
    """A family of issue 26 through the plugin (one process, its own processor and chat template, FastV routed):
    every answer is the one `dpvr eval` gives."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from dpvr.lmms_eval_plugin import TASKS_DIR

    monkeypatch.setenv("DPVR_BENCHMARK", str(gemma3 / "data"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    tasks = TaskManager("WARNING", include_path=str(TASKS_DIR), include_defaults=False)
    got = simple_evaluate(model="dpvr", model_args=f"pretrained={gemma3 / 'model'},method=fastv;k=2;ratio=0.5",
                          tasks=["dpvr_pope"], batch_size=2, device="cpu", limit=4, gen_kwargs="max_new_tokens=2",
                          task_manager=tasks, log_samples=True, verbosity="WARNING")
    run_eval(["fastv:k=2,ratio=0.5"], out=tmp_path / "ours", model=str(gemma3 / "model"),
             settings=EvalSettings(benchmark=str(gemma3 / "data"), families=["pope"], limit=4, batch_size=2,
                                   max_new_tokens=2, device="cpu", progress=False))
    ours = [json.loads(line)["prediction"].strip()
            for p in (tmp_path / "ours" / "predictions").glob("*.jsonl") for line in p.read_text().splitlines()]
    theirs = [s["filtered_resps"][0] for s in sorted(got["samples"]["dpvr_pope"], key=lambda s: s["doc_id"])]
    assert len(ours) == 4 and theirs == ours


def test_stock_pope_task_unchanged_but_for_the_data_location(tiny, tmp_path, monkeypatch):
    """lmms-eval's own ``pope`` task (its YAML and utils.py) on a local copy of a generated POPE file,
    through the plugin: the same answers and accuracy as ``dpvr eval`` on the same questions in that wording."""
    import lmms_eval
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from dpvr.data.questions import SHORT, stem
    from dpvr.lmms_eval_plugin.stock import stock_task

    task_dir = stock_task("pope", tiny / "data", tmp_path / "stock")
    stock = Path(lmms_eval.__file__).resolve().parent / "tasks" / "pope"
    assert (task_dir / "utils.py").read_bytes() == (stock / "utils.py").read_bytes()
    diff = [(a, b) for a, b in zip((stock / "pope.yaml").read_text().splitlines(),
                                   (task_dir / "pope.yaml").read_text().splitlines()) if a != b]
    assert len(diff) == 1 and diff[0][0].startswith("dataset_path:")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    tasks = TaskManager("WARNING", include_path=str(task_dir), include_defaults=False)
    got = simple_evaluate(model="dpvr", model_args=f"pretrained={tiny / 'model'},method=vanilla", tasks=["pope"],
                          batch_size=4, device="cpu", limit=6, gen_kwargs="max_new_tokens=2", task_manager=tasks,
                          log_samples=True, verbosity="WARNING")
    samples = sorted(got["samples"]["pope"], key=lambda s: s["doc_id"])
    records = [json.loads(x) for x in (tiny / "data" / "pope.jsonl").read_text().splitlines()[:6]]
    assert [s["doc"]["question"] for s in samples] == [stem(r["question"]) for r in records]
    # the stock prompt is the question + LLaVA-1.5's short-answer suffix: what dpvr eval asks in the llava wording
    from dpvr.data.questions import reword
    from dpvr.evaluation.generation import Prompt, generate, user_turn
    from dpvr.evaluation.loading import load_base

    asked = [reword(r, "llava")["question"] for r in records]
    assert all(q.endswith("\n" + SHORT) for q in asked)
    model, processor, _ = load_base(str(tiny / "model"), device="cpu")
    from PIL import Image

    ours = generate(model, processor, [Prompt([user_turn(q)], [Image.open(tiny / "data" / r["image"]).convert("RGB")])
                                       for q, r in zip(asked, records)], max_new_tokens=2)
    assert [s["filtered_resps"][0] for s in samples] == [o.strip() for o in ours]
    want = sum(o.strip().lower() == r["answer"].lower() for o, r in zip(ours, records)) / len(records)
    assert got["results"]["pope"]["pope_accuracy,none"] == pytest.approx(want)
