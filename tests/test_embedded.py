"""The shipped checkpoint: stock loading, recorded sha256, fixed answers, well above blind."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from dpvr import embedded

needs_checkpoint = pytest.mark.skipif(not (embedded.PATH / "build.json").exists(),
                                      reason="embedded checkpoint not built yet")


@needs_checkpoint
def test_files_match_build_json():
    info = embedded.build_info()
    assert "model.safetensors" in info["files"] and "config.json" in info["files"]
    embedded.verify()
    total = sum((embedded.PATH / n).stat().st_size for n in info["files"])
    assert total < 20 * 2**20


@needs_checkpoint
def test_loads_with_stock_transformers_only(tmp_path):
    # a fresh interpreter that never imports dpvr: from_pretrained, AutoProcessor and pipeline
    code = f"""
import sys, torch
from transformers import AutoProcessor, LlavaForConditionalGeneration, pipeline
path = {str(embedded.PATH)!r}
m = LlavaForConditionalGeneration.from_pretrained(path)
p = AutoProcessor.from_pretrained(path)
assert p.tokenizer.convert_ids_to_tokens(m.config.image_token_id) == "<image>"
pipe = pipeline("image-text-to-text", model=path)
from PIL import Image
img = Image.new("RGB", (64, 64), (250, 250, 250))
out = pipe(text=[{{"role": "user", "content": [{{"type": "image", "image": img}},
           {{"type": "text", "text": "How many objects are there in the image?"}}]}}], max_new_tokens=3)
assert isinstance(out[0]["generated_text"], (str, list))
assert "dpvr" not in sys.modules
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-2000:]


@needs_checkpoint
def test_answers_fixed_questions():
    from dpvr.evaluation import answer_records
    from dpvr.evaluation.metrics import score

    model, proc = embedded.load_model(), embedded.load_processor()
    items = [json.loads(x) for x in (embedded.PATH / "examples" / "examples.jsonl").read_text().splitlines()]
    preds = answer_records(model, proc, items, embedded.PATH / "examples")
    got = [score(it, p)["correct"] for p, it in zip(preds, items)]
    assert all(got), list(zip([it["id"] for it in items], preds))


@needs_checkpoint
def test_well_above_blind_on_fresh_sample(tmp_path):
    from dpvr.data import generate_dataset
    from dpvr.evaluation import accuracy_report

    root = tmp_path / "fresh"
    generate_dataset(root, seed=12345, num_train=1, num_test_per_family=24, progress=False)
    model, proc = embedded.load_model(), embedded.load_processor()
    fams = [f for f, r in embedded.build_info()["results"].items() if r["accuracy"] - r["blind"] >= 25]
    assert fams
    seen = accuracy_report(model, proc, root, fams, progress=False)
    blind = accuracy_report(model, proc, root, fams, blind=True, progress=False)
    mean_gap = sum(seen[f]["accuracy"] - blind[f]["accuracy"] for f in fams) / len(fams)
    assert mean_gap >= 15, (seen, blind)


def test_benchmark_dir_generates_once_and_verifies(tmp_path, monkeypatch):
    """benchmark_dir's caching and checks, on a small data config standing in for the build's."""
    import hashlib

    from dataclasses import asdict

    from dpvr.data import generate_dataset
    from dpvr.data.generate import DataConfig

    cfg = asdict(DataConfig(seed=5, num_train=10, num_test_per_family=6))
    ref = tmp_path / "ref"
    generate_dataset(ref, progress=False, **cfg)
    sha = hashlib.sha256((ref / "manifest.json").read_bytes()).hexdigest()
    info = {"config": {"data": cfg}, "data": {"manifest_sha256": sha}}
    monkeypatch.setattr(embedded, "build_info", lambda: info)
    root = embedded.benchmark_dir(tmp_path / "cache", progress=False)
    assert (root / "pope.jsonl").read_bytes() == (ref / "pope.jsonl").read_bytes()
    assert embedded.benchmark_dir(tmp_path / "cache", progress=False) == root  # cached
    (root / "count.jsonl").write_text("tampered\n")
    with pytest.raises(ValueError, match="do not match"):
        embedded.benchmark_dir(tmp_path / "cache", progress=False)
    info["data"]["manifest_sha256"] = "0" * 64
    with pytest.raises(ValueError, match="does not match the one the checkpoint was evaluated on"):
        embedded.benchmark_dir(tmp_path / "cache", progress=False)


@needs_checkpoint
def test_package_ships_the_checkpoint_and_nothing_else():
    """Weights, config, tokenizer, processor, chat template, the smoke-test examples and build.json: no build
    logs, loss curves or prediction dumps (the build writes those to its own logs/ folder)."""
    listed = set(embedded.build_info()["files"]) | {"build.json"}
    present = {p.relative_to(embedded.PATH).as_posix() for p in embedded.PATH.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert present == listed
    assert {"model.safetensors", "config.json", "tokenizer.json", "processor_config.json",
            "chat_template.jinja"} <= listed
    assert not any(n.startswith("logs/") or n.startswith("losses") or n.startswith("predictions") for n in listed)
