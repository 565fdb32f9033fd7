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


@pytest.mark.parametrize(
    "kwargs, message",
    [  # each a value one mutation-testing survivor (docs/results/mutation/config.md) let through
        (dict(variant="lf", split=True), r"split must be an integer layer index, got True"),
        (dict(variant="lf", split="3"), r"split must be an integer layer index, got '3'"),
        (dict(variant="vtw"), r"variant 'vtw' needs its withdrawal layer: pass split=K"),
        (dict(variant="fastv", split=3), r"variant 'fastv' has no split \(got split=3\).*with split and fastv_k"),
        (dict(variant="lf", split=3, route="text"), r"unknown route 'text': choose one of all, image, video"),
        (dict(variant="fastest"), r"choose one of vanilla, lf, pc, kv, ideal, fastv, vtw$"),
        (dict(variant="lf", split=3, side_init="zeros"), r"choose one of copy, random$"),
        (dict(variant="lf", split=3, fusion_layers=[]), r"fusion_layers must be a non-empty list.*got \[\]"),
        (dict(variant="lf", split=3, fusion_layers=["5"]), r"fusion_layers must be a non-empty list.*got \['5'\]"),
        (dict(variant="lf", split=3, num_fusion_layers=0), r"num_fusion_layers must be an integer >= 1, got 0"),
        (dict(variant="lf", split=3, num_fusion_layers="2"), r"num_fusion_layers must be an integer >= 1, got '2'"),
        (dict(variant="vtw", split=3, fastv_k=2), r"do not apply to variant 'vtw'.*compose FastV with DPVR routing\)"),
        (dict(variant="fastv", fastv_k=0), r"fastv_k must be an integer layer index >= 1 .*got 0"),
        (dict(variant="fastv", fastv_k=True), r"fastv_k must be an integer layer index >= 1 .*got True"),
        (dict(variant="fastv", fastv_ratio=1.5), r"fastv_ratio must be a number in \[0, 1\] .*got 1\.5"),
        (dict(variant="fastv", fastv_ratio=True), r"fastv_ratio must be a number in \[0, 1\] .*got True"),
        (dict(variant="fastv", fastv_ratio="0.5"), r"fastv_ratio must be a number in \[0, 1\] .*got '0\.5'"),
    ],
)
def test_every_field_check_with_its_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DPVRConfig(**kwargs)


@pytest.mark.parametrize("variant, schedule", [
    ("vanilla", "nothing is routed"), ("pc", "every deep layer fuses"), ("kv", "every deep layer reads image keys/values"),
    ("ideal", "no layer fuses"), ("fastv", "it prunes image tokens, nothing fuses"),
    ("vtw", "image tokens are withdrawn, nothing fuses"),
])
def test_fusion_settings_on_another_variant_name_its_schedule(variant, schedule):
    split = 3 if variant in ("pc", "kv", "ideal", "vtw") else None
    with pytest.raises(ValueError, match=rf"variant '{variant}' has none \({schedule}\): drop fusion_layers"):
        DPVRConfig(variant=variant, split=split, num_fusion_layers=1)


def test_fastv_defaults_edges_and_composition():
    from dpvr.config import FASTV_DEFAULT_K, FASTV_DEFAULT_RATIO, ResolvedPlan

    lf = DPVRConfig(variant="lf", split=3)
    assert lf.fastv_k is None and lf.fastv_ratio is None and not lf.prunes  # no FastV unless asked for
    fastv = DPVRConfig(variant="fastv")
    assert (fastv.fastv_k, fastv.fastv_ratio) == (FASTV_DEFAULT_K, FASTV_DEFAULT_RATIO) == (2, 0.5)
    assert fastv.resolve(8) == ResolvedPlan(8, 8, ["full"] * 8, [], 0, 2, 0.5)
    for ratio in (0, 0.0, 1, 1.0):  # both ends of [0, 1] are allowed, stored as a float
        assert DPVRConfig(variant="fastv", fastv_ratio=ratio).fastv_ratio == float(ratio)
    assert DPVRConfig(variant="fastv", fastv_k=1).resolve(8).prune_layer == 1  # k = 1: ranks at layer 0
    assert DPVRConfig(variant="lf", split=3, fastv_k=3).resolve(8).prune_layer == 3  # k = split is allowed
    with pytest.raises(ValueError, match=r"fastv_k=4 is after split=3: .*so use fastv_k <= 3"):
        DPVRConfig(variant="lf", split=3, fastv_k=4).resolve(8)


def test_deepstack_minimum_split():
    """``min_split`` (Qwen3-VL's deepstack layers): split and fastv_k must come at or after it."""
    assert DPVRConfig(variant="lf", split=2).resolve(8, min_split=2).split == 2
    assert DPVRConfig(variant="fastv", fastv_k=3).resolve(8, min_split=3).prune_layer == 3
    with pytest.raises(ValueError, match=r"^split=1 lies in layers 0\.\.1, where qwen3 adds visual features "
                                         r"\(deepstack\); use split in 2\.\.7$"):
        DPVRConfig(variant="lf", split=1).resolve(8, min_split=2, family="qwen3")
    with pytest.raises(ValueError, match=r"^fastv_k=2 lies in layers 0\.\.2, where this model adds"):
        DPVRConfig(variant="fastv", fastv_k=2).resolve(8, min_split=3)


def test_layers_with_mode():
    plan = DPVRConfig(variant="lf", split=5).resolve(8)
    assert plan.layers_with_mode("text") == [5, 6] and plan.layers_with_mode("fuse") == [7]
    assert plan.layers_with_mode("full") == [0, 1, 2, 3, 4] and plan.layers_with_mode("kv") == []
