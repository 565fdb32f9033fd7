"""Training: label masks, reproducibility, resume, the ideal-variant diagnosis, bad input, 2-process DDP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoProcessor

from dpvr.adapter import WEIGHTS_NAME
from dpvr.data.llava_format import IGNORE_INDEX, tokenize_conversation
from dpvr.train import DataCollator, LlavaConversationDataset, TrainArgs, load_records, train


def args_for(tiny_dir: Path, out: Path, **kw) -> TrainArgs:
    base = dict(out=str(out), model=str(tiny_dir / "model"), data=str(tiny_dir / "data" / "train.json"), split=2,
                batch_size=4, max_steps=4, logging_steps=1, eval_samples=4, progress=False)
    return TrainArgs(**(base | kw))


def side_weights(out: Path) -> dict:
    return load_file(str(out / "adapter" / WEIGHTS_NAME))


def test_label_mask_of_a_multi_turn_sample_token_by_token(tiny_dir, capsys):
    processor = AutoProcessor.from_pretrained(tiny_dir / "model")
    tok = processor.tokenizer
    record = {"id": "m1", "image": "x.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat color is the circle?"}, {"from": "gpt", "value": "red"},
        {"from": "human", "value": "How many shapes?"}, {"from": "gpt", "value": "2"}]}
    ex = tokenize_conversation(record, tok, num_image_tokens=3)
    pieces = [(tok.convert_ids_to_tokens(i), lab != IGNORE_INDEX) for i, lab in zip(ex["input_ids"], ex["labels"])]
    print("\n".join(f"{'L' if learned else '.'} {piece!r}" for piece, learned in pieces))
    learned_text = tok.decode([i for i, lab in zip(ex["input_ids"], ex["labels"]) if lab != IGNORE_INDEX])
    assert learned_text.replace(" ", "") == "red</s>2</s>"
    image_id = tok.convert_tokens_to_ids("<image>")
    assert ex["input_ids"].count(image_id) == 3
    assert all(lab == IGNORE_INDEX for i, lab in zip(ex["input_ids"], ex["labels"]) if i == image_id)
    assert all(lab in (IGNORE_INDEX, i) for i, lab in zip(ex["input_ids"], ex["labels"]))
    assert "L" in capsys.readouterr().out


def test_collator_pads_right_and_stacks_images(tiny_dir):
    processor = AutoProcessor.from_pretrained(tiny_dir / "model")
    records = load_records(tiny_dir / "data" / "train.json")
    with_image = [r for r in records if r.get("image")][:2]
    text_only = [{"id": "t", "conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "hi"}]}]
    ds = LlavaConversationDataset(with_image + text_only, tiny_dir / "data", processor, image_tokens=16)
    batch = DataCollator(pad_token_id=processor.tokenizer.pad_token_id)([ds[0], ds[1], ds[2]])
    assert batch["pixel_values"].shape == (2, 3, 64, 64)
    lengths = batch["attention_mask"].sum(1)
    for i in range(3):
        assert bool((batch["labels"][i, lengths[i]:] == IGNORE_INDEX).all())
        assert bool((batch["attention_mask"][i, : lengths[i]] == 1).all())


def test_training_improves_held_out_loss_and_writes_outputs(tiny_dir, tmp_path):
    summary = train(args_for(tiny_dir, tmp_path / "run", max_steps=8, lr=3e-3))
    assert summary["eval_loss_after"] < summary["eval_loss_before"]
    out = tmp_path / "run"
    for name in ("adapter/adapter_model.safetensors", "adapter/dpvr_config.json", "train_args.json", "loss.jsonl",
                 "loss.png", "result.json"):
        assert (out / name).is_file(), name
    assert TrainArgs.from_json_file(out / "train_args.json").max_steps == 8
    assert all(k.startswith("side_branch.") for k in side_weights(out))


def test_same_seed_same_weights_and_seed_changes_data_order(tiny_dir, tmp_path):
    a = train(args_for(tiny_dir, tmp_path / "a", seed=1))
    b = train(args_for(tiny_dir, tmp_path / "b", seed=1))
    train(args_for(tiny_dir, tmp_path / "c", seed=2))
    wa, wb, wc = side_weights(tmp_path / "a"), side_weights(tmp_path / "b"), side_weights(tmp_path / "c")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["train_loss"] == b["train_loss"]
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


def test_resume_gives_the_same_final_weights(tiny_dir, tmp_path):
    train(args_for(tiny_dir, tmp_path / "full", max_steps=4))
    train(args_for(tiny_dir, tmp_path / "part", max_steps=4, save_steps=2))
    shutil.rmtree(tmp_path / "part" / "checkpoints" / "checkpoint-4")
    (tmp_path / "part" / "adapter" / WEIGHTS_NAME).unlink()
    train(args_for(tiny_dir, tmp_path / "part", max_steps=4, save_steps=2, resume="latest"))
    full, resumed = side_weights(tmp_path / "full"), side_weights(tmp_path / "part")
    for k in full:
        torch.testing.assert_close(resumed[k], full[k])


def test_resume_latest_skips_a_partial_checkpoint_and_reports_the_uninterrupted_loss(tiny_dir, tmp_path):
    """Newest checkpoint partial (trainer_state.json gone, optimizer truncated): resume from the last complete
    one; result.json's train_loss and the loss rows equal the uninterrupted run's (logging not aligned with saving)."""
    kw = dict(max_steps=6, save_steps=2, logging_steps=3)
    full = train(args_for(tiny_dir, tmp_path / "full", **kw))
    train(args_for(tiny_dir, tmp_path / "part", **kw))
    ckpts = tmp_path / "part" / "checkpoints"
    shutil.rmtree(ckpts / "checkpoint-6")
    (ckpts / "checkpoint-4" / "trainer_state.json").unlink()
    opt = ckpts / "checkpoint-4" / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[:100])
    with pytest.raises(ValueError, match="checkpoint-4 is incomplete"):
        train(args_for(tiny_dir, tmp_path / "part", resume=str(ckpts / "checkpoint-4"), **kw))
    resumed = train(args_for(tiny_dir, tmp_path / "part", resume="latest", **kw))
    assert resumed["train_loss"] == full["train_loss"]
    rows = lambda run: (tmp_path / run / "loss.jsonl").read_text()  # noqa: E731
    assert rows("part") == rows("full") and rows("full").count('"train"') == 2
    for k, v in side_weights(tmp_path / "full").items():
        assert torch.equal(side_weights(tmp_path / "part")[k], v)


def test_ideal_variant_reports_zero_gradient_and_why(tiny_dir, tmp_path, capsys):
    summary = train(args_for(tiny_dir, tmp_path / "ideal", variant="ideal", max_steps=1))
    assert summary["first_step_gradient"]["nonzero_grad_elements"] == 0
    assert "exactly zero" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["lora", "full"])
def test_baselines_train(tiny_dir, tmp_path, method):
    summary = train(args_for(tiny_dir, tmp_path / method, method=method, max_steps=2))
    assert summary["trainable_parameters"] > 0
    assert (tmp_path / method / ("adapter" if method == "lora" else "model")).is_dir()


def test_bad_input_is_a_clear_error(tiny_dir, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[{\"id\": 1, ")
    with pytest.raises(ValueError, match="not valid JSON"):
        train(args_for(tiny_dir, tmp_path / "o1", data=str(bad)))
    records = load_records(tiny_dir / "data" / "train.json")
    img = next(r for r in records if r.get("image"))
    missing = dict(img, id="gone", image="images/none.png")
    no_answer = {"id": "mute", "conversations": [{"from": "human", "value": "hi"}]}
    for rec, pattern in [(missing, "record 'gone': image .* does not exist"), (no_answer, "'mute'.*no assistant")]:
        path = tmp_path / "one.json"
        path.write_text(json.dumps([rec]))
        with pytest.raises((ValueError, FileNotFoundError), match=pattern):
            train(args_for(tiny_dir, tmp_path / "o2", data=str(path), image_folder=str(tiny_dir / "data")))
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(records[:12] + [missing]))
    summary = train(args_for(tiny_dir, tmp_path / "o3", data=str(path), image_folder=str(tiny_dir / "data"),
                             skip_bad=True, max_steps=1, eval_samples=1))
    assert summary["skipped_records"] + summary["train_records"] + summary["eval_records"] == 13
    locked = tmp_path / "locked"
    locked.write_text("a file, not a folder")
    with pytest.raises(ValueError, match="cannot be created.*is a file"):
        train(args_for(tiny_dir, locked / "out"))
    with pytest.raises(ValueError, match="exists and is not a folder"):
        train(args_for(tiny_dir, locked))
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()  # failed runs leave no empty --out


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--distill", "--split", "1"]], ids=["plain", "distill"])
def test_two_process_ddp_matches_one_process(tiny_dir, tmp_path, extra):
    """accelerate launch with 2 CPU processes (gloo), same global batch as 1 process.

    Uses the shipped configs/accelerate/ddp.yaml: on a machine without CUDA, accelerate's MULTI_GPU
    launcher starts torch.distributed.run and the processes use gloo (`--cpu` would start one process).
    With --distill (split 1: both terms non-zero from the first step), the terms are normalised across
    processes as the LM loss is.
    """
    common = ["--model", str(tiny_dir / "model"), "--data", str(tiny_dir / "data" / "train.json"), "--split", "2",
              "--max-steps", "3", "--eval-samples", "4", "--no-progress", "--seed", "3", *extra]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    one = subprocess.run([sys.executable, "-m", "dpvr", "train", "--out", str(tmp_path / "one"), "--batch-size", "4",
                          *common], env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    ddp_config = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "ddp.yaml"
    two = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ddp_config),
                          "--num_processes", "2", "--dynamo_backend", "no", "-m", "dpvr",
                          "train", "--out", str(tmp_path / "two"), "--batch-size", "2", *common],
                         env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    w1, w2 = side_weights(tmp_path / "one"), side_weights(tmp_path / "two")
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5)
