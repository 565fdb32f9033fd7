"""Analytic FLOPs model: SPEC §9 closed forms, the 7B reference savings, and method identities."""

from __future__ import annotations

import numpy as np
import pytest

from dpvr.config import DPVRConfig
from dpvr.efficiency.flops import (
    ShapeDims, compare, decode_flops, kv_cache_bytes, prefill_flops, vision_flops_per_image,
)
from dpvr.efficiency.methods import Method, make_methods, prompt_mask
from dpvr.shapes import load_shape_config


@pytest.fixture(scope="module")
def dims7b():
    return ShapeDims.from_config(load_shape_config("llava-1.5-7b"))


def spec_layer(tokens: int, pairs: int, d: int = 4096, dff: int = 11008) -> int:
    """SPEC §9: 2·tokens·(4d² + 3·d·d_ff) + 4·d·pairs."""
    return 2 * tokens * (4 * d * d + 3 * d * dff) + 4 * d * pairs


def tri(n: int) -> int:
    return n * (n + 1) // 2


def lf(split=18, **kw):
    return Method("lf", DPVRConfig(variant="lf", split=split, **kw))


def test_vanilla_matches_spec_closed_form(dims7b):
    L = 35 + 576 + 128
    got = prefill_flops(dims7b, Method("vanilla", DPVRConfig(variant="vanilla")), prompt_mask(35, 576, 128))
    assert got["lm"] == 32 * spec_layer(L, tri(L))
    assert got["side_branch"] == 0


def test_lf_matches_hand_count(dims7b):
    S, I, T = 35, 576, 128
    L, P = S + I + T, S + I
    shallow = 18 * spec_layer(L, tri(L))
    text = 13 * spec_layer(L - I, tri(L - I))  # text positions attend to text positions only
    fuse = spec_layer(L, tri(L))
    side = spec_layer(P, tri(P))  # one side layer, causal over the prefix up to the last image token
    got = prefill_flops(dims7b, lf(), prompt_mask(S, I, T))
    assert got["side_branch"] == side
    assert got["lm"] == shallow + text + fuse + side


def test_kv_layer_pairs_and_projections(dims7b):
    S, I, T = 35, 576, 128
    L, d, dff = S + I + T, 4096, 11008
    # text queries: system tokens see the system prefix, later text sees everything before it
    pairs = tri(S) + sum(p + 1 for p in range(S + I, L))
    kv_layer = 2 * (L - I) * (2 * d * d + 3 * d * dff) + 2 * L * (2 * d * d) + 4 * d * pairs
    got = prefill_flops(dims7b, Method("kv", DPVRConfig(variant="kv", split=18)), prompt_mask(S, I, T))
    assert got["decoder"] == 18 * spec_layer(L, tri(L)) + 14 * kv_layer


def test_reference_savings_7b(dims7b):
    """SPEC §9: LLaVA-1.5-7B, 35 system + 576 image tokens, s=18, K=1, D=1: ~29 % at 128, ~20 % at 512 (LM total)."""
    rows = compare(dims7b, make_methods(["lf"], 32, split=18), text_tokens=[128, 512])
    by_t = {r["text_tokens"]: r for r in rows if r["method"] == "lf"}
    assert by_t[128]["saving_lm"] == pytest.approx(0.29, abs=0.01)
    assert by_t[512]["saving_lm"] == pytest.approx(0.20, abs=0.01)
    # the whole-model figure (vision tower, projector, lm_head the same for all) is a bit lower
    assert 0.26 < by_t[128]["saving_whole"] < by_t[128]["saving_lm"]


def test_lf_with_every_deep_layer_fused_equals_pc(dims7b):
    mask = prompt_mask(35, 576, 64)
    all_fused = lf(fusion_layers=list(range(18, 32)))
    pc = Method("pc", DPVRConfig(variant="pc", split=18))
    assert prefill_flops(dims7b, all_fused, mask) == prefill_flops(dims7b, pc, mask)
    vanilla = Method("vanilla", DPVRConfig(variant="vanilla"))
    assert prefill_flops(dims7b, pc, mask)["lm"] - prefill_flops(dims7b, vanilla, mask)["lm"] == \
        prefill_flops(dims7b, pc, mask)["side_branch"]


def test_peers_identities(dims7b):
    mask = prompt_mask(35, 576, 64)
    vanilla = prefill_flops(dims7b, Method("vanilla", DPVRConfig(variant="vanilla")), mask)
    assert prefill_flops(dims7b, Method("fastv", options={"k": 2, "ratio": 1.0}), mask) == vanilla
    vtw2 = prefill_flops(dims7b, Method("vtw", options={"k": 2}), mask)
    assert prefill_flops(dims7b, Method("fastv", options={"k": 2, "ratio": 0.0}), mask) == vtw2
    ideal = prefill_flops(dims7b, Method("ideal", DPVRConfig(variant="ideal", split=18)), mask)
    vtw18 = prefill_flops(dims7b, Method("vtw", options={"k": 18}), mask)
    assert ideal["decoder"] == vtw18["decoder"] and ideal["side_branch"] > 0


def test_vision_and_head_same_for_every_method(dims7b):
    rows = compare(dims7b, make_methods(["lf", "pc", "kv", "ideal", "fastv", "vtw"], 32, split=18), text_tokens=[64])
    assert len({(r["prefill_vision"], r["prefill_lm_head"]) for r in rows}) == 1
    # CLIP ViT-L/14-336 (d=1024, d_ff=4096, 24 layers, 576 patches of 3*14*14 + CLS = 577 tokens) and
    # the 2-layer projector 1024 -> 4096 -> 4096, counted exactly: patch embedding, per layer the
    # projections and MLP plus 4*d*n^2 for the (bidirectional) attention, and the projector.
    n, d = 577, 1024
    embed = 2 * 576 * (3 * 14 * 14) * d
    layer = 2 * n * (4 * d * d + 2 * d * 4096) + 4 * d * n * n
    projector = 2 * 576 * (d * 4096 + 4096 * 4096)
    assert vision_flops_per_image(dims7b) == embed + 24 * layer + projector == 406_077_407_232


def test_decode_and_kv_cache(dims7b):
    S, I, T = 35, 576, 128
    L, mask = S + I + T, prompt_mask(S, I, T)
    vanilla = Method("vanilla", DPVRConfig(variant="vanilla"))
    # text layers cache L - I positions, every other layer L (fp16: 2 bytes, k and v)
    expected = (19 * L + 13 * (L - I)) * 2 * 4096 * 2
    assert kv_cache_bytes(dims7b, lf(), mask) == expected
    assert kv_cache_bytes(dims7b, vanilla, mask) == 32 * L * 2 * 4096 * 2
    assert decode_flops(dims7b, lf(), mask) < decode_flops(dims7b, vanilla, mask)
    kv = Method("kv", DPVRConfig(variant="kv", split=18))
    assert decode_flops(dims7b, kv, mask) == decode_flops(dims7b, vanilla, mask)
    # later decode steps attend to more cached positions
    assert decode_flops(dims7b, vanilla, mask, new_tokens=64) > decode_flops(dims7b, vanilla, mask, new_tokens=1)


def test_grouped_query_attention_uses_narrow_kv_width():
    dims = ShapeDims.from_config(load_shape_config("tiny"))  # 4 heads, 2 kv heads, hidden 64
    assert (dims.q_width, dims.kv_width) == (64, 32)
    mask = prompt_mask(3, dims.image_tokens, 5)
    L = len(mask)
    d, dff = 64, 128
    layer = 2 * L * (2 * d * d + 3 * d * dff) + 2 * L * (2 * d * 32) + 4 * d * tri(L)
    assert prefill_flops(dims, Method("vanilla", DPVRConfig(variant="vanilla")), mask)["decoder"] == 4 * layer


def test_batch_scales_linearly_and_bad_inputs_are_refused(dims7b):
    mask = prompt_mask(35, 576, 64)
    one = prefill_flops(dims7b, lf(), mask)
    assert prefill_flops(dims7b, lf(), mask, batch=3) == {k: 3 * v for k, v in one.items()}
    with pytest.raises(ValueError, match="unknown method"):
        make_methods(["lf", "fastvv"], 32, split=18)
    with pytest.raises(ValueError, match="split=40"):
        make_methods(["lf"], 32, split=40)
    with pytest.raises(ValueError, match="ratio"):
        make_methods(["fastv"], 32, split=18, fastv_ratio=1.5)
    with pytest.raises(ValueError, match="whole number of images"):
        prefill_flops(dims7b, lf(), np.array([True] * 5 + [False] * 3))
