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


def test_resolved_plans_exactly_and_at_the_boundaries():
    """Whole ResolvedPlan equality (every field), and the edges of each range check (found by mutation testing)."""
    from dpvr.config import ResolvedPlan

    full = ["full"] * 8
    assert DPVRConfig(variant="vanilla").resolve(8) == ResolvedPlan(8, 8, full, [], 0)
    assert DPVRConfig(variant="lf", split=8).resolve(8) == ResolvedPlan(8, 8, full, [], 0)
    assert DPVRConfig(variant="lf", split=8, fastv_k=2).resolve(8) == ResolvedPlan(8, 8, full, [], 0, 2, 0.5)
    assert DPVRConfig(variant="vtw", split=3).resolve(8) == ResolvedPlan(8, 3, ["full"] * 3 + ["text"] * 5, [], 0)
    assert DPVRConfig(variant="pc", split=5).resolve(8) == ResolvedPlan(8, 5, ["full"] * 5 + ["fuse"] * 3, [5, 6, 7], 1)
    assert DPVRConfig(variant="kv", split=5).resolve(8).fusion_layers == []
    # the edges are allowed: split 1, a side branch as deep as the deep stack, every deep layer fusing
    assert DPVRConfig(variant="lf", split=1).resolve(8).split == 1
    assert DPVRConfig(variant="lf", split=5, side_depth=3).resolve(8).side_depth == 3
    assert DPVRConfig(variant="lf", split=5, num_fusion_layers=3).resolve(8).fusion_layers == [5, 6, 7]
    with pytest.raises(ValueError, match="nothing to fuse"):
        DPVRConfig(variant="lf", split=8, num_fusion_layers=1).resolve(8)
    with pytest.raises(ValueError, match=r"split=0 is outside 1\.\.7 for a model with 8"):
        DPVRConfig(variant="lf", split=0).resolve(8)
    with pytest.raises(ValueError, match=r"deep stack \(layers 5\.\.7, 3 layers\)"):
        DPVRConfig(variant="lf", split=5, side_depth=4).resolve(8)
    with pytest.raises(ValueError, match=r"more than the 3 deep layers \(5\.\.7\)"):
        DPVRConfig(variant="lf", split=5, num_fusion_layers=4).resolve(8)
    with pytest.raises(ValueError, match=r"\[0\] in the shallow stack: fusion layers must lie in the deep stack 5\.\.7"):
        DPVRConfig(variant="lf", split=5, fusion_layers=[0]).resolve(8)
    with pytest.raises(ValueError, match=r"\[9\] outside the deep stack"):
        DPVRConfig(variant="lf", split=5, fusion_layers=[9]).resolve(8)
    with pytest.raises(ValueError, match=r"compose FastV with DPVR routing"):
        DPVRConfig(variant="vanilla", fastv_k=2)
    assert DPVRConfig(variant="fastv", fastv_k=7).resolve(8).prune_layer == 7  # k = N-1 ranks at layer N-2
    with pytest.raises(ValueError, match=r"fastv_k=8 is outside 1\.\.7 .*the ranking uses layer k-1's attention\)"):
        DPVRConfig(variant="fastv", fastv_k=8).resolve(8)


def test_json_is_indented_and_sorted():
    text = DPVRConfig(variant="lf", split=3).to_json()
    assert text.splitlines()[:3] == ["{", '  "fastv_k": null,', '  "fastv_ratio": null,']
