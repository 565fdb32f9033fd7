"""Self-distillation (`dpvr train --distill`): the terms, the teacher, the cache, and training with them."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoProcessor, LlavaForConditionalGeneration

from dpvr import DPVRConfig, get_dpvr_model
from dpvr.adapter import WEIGHTS_NAME
from dpvr.engine.teacher import feature_layers, side_capture, unrouted_forward
from dpvr.train import DataCollator, LlavaConversationDataset, TrainArgs, load_records, train
from dpvr.train.distill import BatchTargets, feature_loss, feature_sum, kl_sum, live_targets
from dpvr.train.teacher_cache import cache_key, ensure_cache


def args_for(tiny_dir, out, **kw) -> TrainArgs:
    base = dict(out=str(out), model=str(tiny_dir / "model"), data=str(tiny_dir / "data" / "train.json"), split=2,
                batch_size=4, max_steps=3, logging_steps=1, eval_samples=4, progress=False)
    return TrainArgs(**(base | kw))


def weights(out) -> dict:
    return load_file(str(out / "adapter" / WEIGHTS_NAME))


def rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines() if '"train"' in line]


def batch_of(tiny_dir, n: int = 4, text_only: bool = False) -> tuple[dict, object]:
    processor = AutoProcessor.from_pretrained(tiny_dir / "model")
    records = [r for r in load_records(tiny_dir / "data" / "train.json") if bool(r.get("image")) != text_only][:n]
    if text_only and not records:
        records = [{"id": "t", "conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "hi"}]}]
    ds = LlavaConversationDataset(records, tiny_dir / "data", processor, image_tokens=16)
    collator = DataCollator(pad_token_id=processor.tokenizer.pad_token_id)
    return collator([ds[i] for i in range(len(ds))]), (ds, collator)


def model_for(tiny_dir, **cfg):
    base = LlavaForConditionalGeneration.from_pretrained(tiny_dir / "model").eval()
    return get_dpvr_model(base, DPVRConfig(**({"variant": "lf", "split": 2} | cfg)))


# ----------------------------------------------------------------------------- the terms
def test_kl_term_is_temperature_scaled_kl_at_the_supervised_positions():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 4, -100], [-100, 1, -100, -100, 2]])
    mask = labels[:, 1:] != -100  # logits at t predict label t+1
    targets = BatchTargets(teacher[:, :-1][mask], None, {})
    t = 2.0
    expected = F.kl_div(F.log_softmax(student[:, :-1][mask] / t, -1), F.log_softmax(teacher[:, :-1][mask] / t, -1),
                        log_target=True, reduction="sum") * t * t
    torch.testing.assert_close(kl_sum(student, labels, targets, t), expected)
    assert float(kl_sum(teacher, labels, targets, t)) == 0.0  # a student equal to its teacher: exactly 0
    # top-k: the teacher's k best tokens renormalised, the student's full-vocabulary log-probabilities
    values, idx = targets.logit_values.topk(3, -1)
    log_p = F.log_softmax(values / t, -1)
    log_q = F.log_softmax(student[:, :-1][mask] / t, -1).gather(-1, idx)
    torch.testing.assert_close(kl_sum(student, labels, BatchTargets(values, idx, {}), t),
                               (log_p.exp() * (log_p - log_q)).sum() * t * t)


def test_feature_terms():
    torch.manual_seed(0)
    s, t = torch.randn(6, 4), torch.randn(6, 4)
    torch.testing.assert_close(feature_loss(s, {3: t}, "mse"), ((s - t).pow(2).sum(1) / t.pow(2).sum(1)).mean())
    # token sums: two halves add up to the whole (what several processes' shares do)
    torch.testing.assert_close(feature_sum(s[:2], {3: t[:2]}, "mse") + feature_sum(s[2:], {3: t[2:]}, "mse"),
                               feature_sum(s, {3: t}, "mse"))
    torch.testing.assert_close(feature_loss(s, {3: t, 4: 2 * s}, "cosine"),
                               ((1 - F.cosine_similarity(s, t, dim=-1)).mean() + 0) / 2, atol=1e-6, rtol=0)
    assert feature_loss(None, {3: t}, "mse") is None
    with pytest.raises(ValueError, match="do not match"):
        feature_loss(s[:5], {3: t}, "mse")


def test_feature_layers_are_the_layers_that_receive_the_side_branch(tiny_dir):
    plan = lambda **cfg: model_for(tiny_dir, **cfg).plan  # noqa: E731
    assert feature_layers(plan()) == [3]  # lf, K=1: the last layer
    assert feature_layers(plan(num_fusion_layers=2)) == [2, 3]
    assert feature_layers(plan(variant="pc")) == [2, 3]
    assert feature_layers(plan(variant="kv")) == [2, 3]
    assert feature_layers(plan(variant="ideal")) == [4]  # nothing receives it: the stack's output


# ----------------------------------------------------------------------------- the teacher at initialisation
def test_at_init_the_side_branch_equals_the_fusion_input_only_when_fusion_follows_it(tiny_dir):
    """Side branch = copy of layer s, so its output is what vanilla layer s gives the image positions: the
    feature term is 0 at init when the fusion layer is s+1, and not otherwise. The KL term is not 0 even
    then: text layers s..F-1 run without the image, so the routed text states differ from vanilla's."""
    batch, _ = batch_of(tiny_dir)
    for split, expect_zero in [(2, True), (1, False)]:  # 4 layers, D=1, K=1 fuses at layer 3
        model = model_for(tiny_dir, split=split)
        targets = live_targets(model, batch, feature_layers(model.plan), top_k=0)
        with torch.no_grad(), side_capture(model, batch["input_ids"]) as side:
            logits = model(**batch, use_cache=False).logits
        feature = float(feature_loss(side.states, targets.states, "mse"))
        assert (feature < 1e-10) == expect_zero, (split, feature)
        assert float(kl_sum(logits, batch["labels"], targets, 1.0)) > 1e-4
    # a batch without images: routing changes nothing, the KL term vanishes
    text, _ = batch_of(tiny_dir, text_only=True)
    model = model_for(tiny_dir, split=2)
    with torch.no_grad():
        logits = model(**text, use_cache=False).logits
    assert float(kl_sum(logits, text["labels"], live_targets(model, text, [3], 0), 1.0)) < 1e-8


def test_teacher_forward_is_the_unwrapped_model_and_leaves_modes_as_they_were(tiny_dir):
    batch, _ = batch_of(tiny_dir)
    model = model_for(tiny_dir)
    model.train()
    plain = LlavaForConditionalGeneration.from_pretrained(tiny_dir / "model").eval()
    with torch.no_grad():
        expected = plain(**{k: v for k, v in batch.items() if k != "labels"}, output_hidden_states=True)
    logits, states = unrouted_forward(model, batch, [2, 4])
    assert torch.equal(logits, expected.logits)
    visual = model.backbone.visual_mask(batch["input_ids"])
    assert torch.equal(states[2], expected.hidden_states[2][visual])  # entering layer 2 = after layer 1
    assert states[4].shape == (int(visual.sum()), model.text_config.hidden_size)
    assert all(m.training for m in model.modules())


# ----------------------------------------------------------------------------- the cache
def test_cached_targets_equal_computed_ones(tiny_dir, tmp_path):
    _, (ds, collator) = batch_of(tiny_dir, n=6)
    model = model_for(tiny_dir)
    key = cache_key(model.base, tiny_dir / "data" / "train.json", tiny_dir / "data", top_k=5)
    cache = ensure_cache(tmp_path / "cache", model, ds, collator, [3], key, batch_size=3, log=lambda *_: None)
    for group in ([0, 1, 2], [3, 4, 5]):  # the grouping of the cache pass: bit for bit
        live = live_targets(model, collator([ds[i] for i in group]), [3], top_k=5)
        stored = cache.batch_targets(group, [3])
        assert torch.equal(stored.logit_values, live.logit_values)
        assert torch.equal(stored.logit_indices, live.logit_indices)
        assert torch.equal(stored.states[3], live.states[3])
    other = [5, 0]  # another grouping (other padding): equal to float rounding
    live, stored = live_targets(model, collator([ds[i] for i in other]), [3], 5), cache.batch_targets(other, [3])
    torch.testing.assert_close(stored.logit_values, live.logit_values, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stored.states[3], live.states[3], atol=1e-5, rtol=1e-5)
    # reused as it is; a new layer extends it (keeping the old one); another top-k recomputes it
    said = []
    assert ensure_cache(tmp_path / "cache", model, ds, collator, [3], key, 3, log=said.append).manifest == cache.manifest
    assert not said
    extended = ensure_cache(tmp_path / "cache", model, ds, collator, [2], key, 3, log=said.append)
    assert extended.layers == [2, 3] and len(said) == 1
    assert len(list((tmp_path / "cache").glob("targets-*.safetensors"))) == 1


# ----------------------------------------------------------------------------- training
def test_weight_zero_is_plain_training_bit_for_bit(tiny_dir, tmp_path):
    plain = train(args_for(tiny_dir, tmp_path / "plain"))
    zero = train(args_for(tiny_dir, tmp_path / "zero", distill=True, distill_kl_weight=0, distill_feature_weight=0))
    a, b = weights(tmp_path / "plain"), weights(tmp_path / "zero")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert plain["train_loss"] == zero["train_loss"]
    assert all("distill_kl" in r for r in rows(tmp_path / "zero"))  # measured, not added
    assert not any("distill_kl" in r for r in rows(tmp_path / "plain"))


def test_distilled_loss_is_lm_loss_plus_the_weighted_terms(tiny_dir, tmp_path):
    """Step 1 (same init, same batch): logged loss = LM loss + 0.5 KL + 2 feature (split 1: feature > 0 at init)."""
    train(args_for(tiny_dir, tmp_path / "plain", max_steps=1, split=1))
    train(args_for(tiny_dir, tmp_path / "d", max_steps=1, split=1, distill=True, distill_kl_weight=0.5,
                   distill_feature_weight=2.0))
    (p,), (d,) = rows(tmp_path / "plain"), rows(tmp_path / "d")
    assert d["distill_kl"] > 0 and d["distill_feature"] > 0
    assert d["loss"] == pytest.approx(p["loss"] + 0.5 * d["distill_kl"] + 2.0 * d["distill_feature"], rel=1e-5)


@pytest.mark.parametrize("variant", ["lf", "pc", "kv", "ideal"])
def test_every_variant_trains_with_distillation(tiny_dir, tmp_path, variant):
    """Even 'ideal' (zero LM gradient) gets a gradient: the feature term targets what its stack leaves."""
    summary = train(args_for(tiny_dir, tmp_path / variant, variant=variant, split=1, max_steps=1, distill=True))
    assert summary["first_step_gradient"]["nonzero_grad_elements"] > 0
    (row,) = rows(tmp_path / variant)
    assert row["distill_kl"] >= 0 and row["distill_feature"] > 0


def test_cached_training_equals_live_training(tiny_dir, tmp_path):
    """Batch size 1: the cache pass and the training batches have the same shapes, so the same bits."""
    kw = dict(distill=True, batch_size=1, distill_top_k=7)
    live = train(args_for(tiny_dir, tmp_path / "live", **kw))
    cached = train(args_for(tiny_dir, tmp_path / "cached", distill_cache=str(tmp_path / "targets"), **kw))
    a, b = weights(tmp_path / "live"), weights(tmp_path / "cached")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert live["train_loss"] == cached["train_loss"]
    # the stored targets are what trains: other stored logits, other weights
    manifest = json.loads((tmp_path / "targets" / "manifest.json").read_text())
    stored = load_file(str(tmp_path / "targets" / manifest["targets"]))
    save_file(stored | {"logit_values": stored["logit_values"].flip(-1)}, str(tmp_path / "targets" / manifest["targets"]))
    train(args_for(tiny_dir, tmp_path / "tampered", distill_cache=str(tmp_path / "targets"), **kw))
    assert any(not torch.equal(a[k], v) for k, v in weights(tmp_path / "tampered").items())


def test_distilled_resume_and_gradient_checkpointing_give_the_same_weights(tiny_dir, tmp_path):
    kw = dict(distill=True, max_steps=4)
    train(args_for(tiny_dir, tmp_path / "full", **kw))
    train(args_for(tiny_dir, tmp_path / "part", save_steps=2, **kw))
    shutil.rmtree(tmp_path / "part" / "checkpoints" / "checkpoint-4")
    (tmp_path / "part" / "adapter" / WEIGHTS_NAME).unlink()
    train(args_for(tiny_dir, tmp_path / "part", save_steps=2, resume="latest", **kw))
    train(args_for(tiny_dir, tmp_path / "gc", gradient_checkpointing=True, **kw))
    full = weights(tmp_path / "full")
    for k, v in weights(tmp_path / "part").items():
        assert torch.equal(v, full[k])
    for k, v in weights(tmp_path / "gc").items():
        torch.testing.assert_close(v, full[k])


@pytest.mark.parametrize("kw, message", [
    (dict(method="lora"), "has no routing"),
    (dict(distill_temperature=0), "temperature must be > 0"),
    (dict(distill_kl_weight=-1), "kl-weight must be"),
    (dict(distill_feature_loss="l1"), "feature-loss must be one of"),
    (dict(distill_top_k=-2), "top-k must be >= 0"),
])
def test_bad_distill_settings_are_one_line_errors(tmp_path, kw, message):
    with pytest.raises(ValueError, match=message):
        TrainArgs(out=str(tmp_path), distill=True, **kw)
    with pytest.raises(ValueError, match="needs --distill"):
        TrainArgs(out=str(tmp_path), distill_cache=str(tmp_path / "c"))
    with pytest.raises(ValueError, match="--lr-scheduler 'cosin' is not one of"):
        TrainArgs(out=str(tmp_path), lr_scheduler="cosin")
