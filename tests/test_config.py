"""DPVRConfig: schedules per variant, JSON round-trip, and every validation error."""

from __future__ import annotations

import pytest

from dpvr import DPVRConfig


def test_schedules_per_variant():
    n = 8
    assert DPVRConfig(variant="vanilla").resolve(n).modes == ["full"] * n
    assert DPVRConfig(variant="lf", split=5).resolve(n).modes == ["full"] * 5 + ["text", "text", "fuse"]
    assert DPVRConfig(variant="lf", split=5, num_fusion_layers=2).resolve(n).fusion_layers == [6, 7]
    assert DPVRConfig(variant="pc", split=5).resolve(n).modes[5:] == ["fuse"] * 3
    assert DPVRConfig(variant="kv", split=5).resolve(n).modes[5:] == ["kv"] * 3
    assert DPVRConfig(variant="ideal", split=5).resolve(n).modes[5:] == ["text"] * 3
    assert DPVRConfig(variant="lf", split=8).resolve(n).routed is False  # split = N routes nothing


def test_json_round_trip(tmp_path):
    cfg = DPVRConfig(variant="lf", split=4, fusion_layers=[7, 5], side_depth=2)
    assert cfg.fusion_layers == [5, 7]
    assert DPVRConfig.from_json(cfg.to_json()) == cfg
    path = tmp_path / "c.json"
    path.write_text(cfg.to_json())
    assert DPVRConfig.from_json_file(path) == cfg


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(variant="fastest", split=3), "unknown variant 'fastest'"),
        (dict(variant="lf"), "needs a split layer"),
        (dict(variant="pc", split=3, num_fusion_layers=1), "only for variant 'lf'"),
        (dict(variant="ideal", split=3, fusion_layers=[7]), "only for variant 'lf'"),
        (dict(variant="lf", split=3, fusion_layers=[5, 5]), "duplicates"),
        (dict(variant="lf", split=3, fusion_layers=[5], num_fusion_layers=2), "contradicts"),
        (dict(variant="lf", split=3, side_depth=0), "side_depth must be"),
        (dict(variant="lf", split=3, side_init="zeros"), "unknown side_init"),
    ],
)
def test_field_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DPVRConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(variant="lf", split=0), r"split=0 is outside 1\.\.7"),
        (dict(variant="lf", split=9), r"split=9 is outside 1\.\.7"),
        (dict(variant="lf", split=4, fusion_layers=[2, 7]), r"\[2\] in the shallow stack"),
        (dict(variant="lf", split=4, fusion_layers=[9]), r"\[9\] outside the deep stack"),
        (dict(variant="lf", split=4, side_depth=5), "larger than the deep stack"),
        (dict(variant="lf", split=4, num_fusion_layers=5), "more than the 4 deep layers"),
    ],
)
def test_errors_against_the_backbone(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DPVRConfig(**kwargs).resolve(8)


def test_unknown_json_field_is_refused():
    with pytest.raises(ValueError, match="unknown DPVRConfig field"):
        DPVRConfig.from_dict({"variant": "lf", "split": 3, "fusion": 2})


def test_non_llava_model_is_refused():
    import dpvr
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(TypeError, match="no backbone adapter for model type .llama.; supported: .*llava.*qwen2_vl"):
        dpvr.get_dpvr_model(llama, DPVRConfig(variant="lf", split=1))
