"""Inference-time peers in the routing engine (SPEC §6): FastV, VTW, and FastV composed with DPVR-LF.

Each is a `DPVRConfig` of the same engine; these tests hold them to their definitions: exact
equality with vanilla where they prune nothing, FastV's kept set against a reference read from
``output_attentions`` under eager attention, batched == per-sample, cached decode == recompute.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import dpvr
from conftest import (IMAGE_TOKEN_ID, assert_cached_decode_equals_recompute, make_tiny_llava, num_image_tokens, pad_batch, random_pixels, sample_ids)

N = 6  # layers of the tiny model
PEERS = {
    "fastv": dict(variant="fastv", fastv_k=2, fastv_ratio=0.5),
    "vtw": dict(variant="vtw", split=3),
    "lf+fastv": dict(variant="lf", split=3, fastv_k=2, fastv_ratio=0.5),
}


def wrap(base, **cfg):
    return dpvr.get_dpvr_model(base, dpvr.DPVRConfig(**cfg))


def batch_of_three(base):
    """One image, two images (shorter text), no image: per-sample kept sets differ in a padded batch."""
    n = num_image_tokens(base)
    seqs = [sample_ids(1, n, seed=1), sample_ids(2, n, seed=2, text=(9, 10)), sample_ids(0, n, seed=3)]
    pix = random_pixels(3, base, seed=4)
    return seqs, pix, [pix[:1], pix[1:3], None]


def reference_kept(base_eager, seq, pix, k, ratio):
    """FastV's kept image positions, read from the unwrapped model's eager attention weights."""
    ids = torch.tensor([seq])
    attn = base_eager(input_ids=ids, pixel_values=pix, output_attentions=True).attentions[k - 1]  # (1, H, L, L)
    scores = attn[0, :, -1, :].mean(0)  # head mean, last query
    image = (ids[0] == IMAGE_TOKEN_ID).nonzero().squeeze(1)
    n_keep = round(ratio * len(image))
    return sorted(image[scores[image].topk(n_keep).indices].tolist())


# ----------------------------------------------------------------------------- equal to vanilla
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_fastv_keeping_everything_and_vtw_at_N_equal_vanilla_exactly(attn):
    base = make_tiny_llava(attn=attn)
    seqs, pix, per_pix = batch_of_three(base)
    ids, pix = torch.tensor([seqs[0]]), per_pix[0]
    ref = base(input_ids=ids, pixel_values=pix).logits
    fastv = wrap(base, variant="fastv", fastv_k=2, fastv_ratio=1.0)
    assert fastv.plan.routed and fastv.plan.prune_layer == 2  # the engine runs, ranks and keeps all
    assert torch.equal(fastv(input_ids=ids, pixel_values=pix).logits, ref)
    assert torch.equal(wrap(base, variant="vtw", split=N)(input_ids=ids, pixel_values=pix).logits, ref)


def test_lf_with_fastv_keeping_everything_equals_lf():
    base = make_tiny_llava()
    seqs, pix, _ = batch_of_three(base)
    ids, mask = pad_batch(seqs, "left")
    lf = wrap(base, variant="lf", split=3)
    both = wrap(base, variant="lf", split=3, fastv_k=2, fastv_ratio=1.0)
    both.side_branch.load_state_dict(lf.side_branch.state_dict())
    a = lf(input_ids=ids, attention_mask=mask, pixel_values=pix).logits
    b = both(input_ids=ids, attention_mask=mask, pixel_values=pix).logits
    assert_close(b[mask.bool()], a[mask.bool()])


def test_vtw_and_fastv_keeping_nothing_equal_ideal_at_text_positions():
    # ideal's text never sees the side branch, so its text positions are VTW's; FastV with R = 0 drops
    # every image token after layer k-1, which is VTW at k.
    base = make_tiny_llava()
    seqs, pix, _ = batch_of_three(base)
    ids, mask = pad_batch(seqs, "left")
    text = mask.bool() & (ids != IMAGE_TOKEN_ID)
    kw = dict(input_ids=ids, attention_mask=mask, pixel_values=pix)
    vtw = wrap(base, variant="vtw", split=3)(**kw).logits
    assert_close(vtw[text], wrap(base, variant="ideal", split=3)(**kw).logits[text])
    assert_close(wrap(base, variant="fastv", fastv_k=3, fastv_ratio=0.0)(**kw).logits[text], vtw[text])


# ----------------------------------------------------------------------------- FastV's ranking
@pytest.mark.parametrize("ratio", [0.5, 0.25])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_fastv_kept_set_equals_eager_output_attentions_reference(attn, ratio):
    k = 2
    reference_model = make_tiny_llava(attn="eager")
    seqs, pix, per_pix = batch_of_three(reference_model)
    expected = [reference_kept(reference_model, s, p, k, ratio) for s, p in zip(seqs, per_pix)]
    model = wrap(make_tiny_llava(attn=attn), variant="fastv", fastv_k=k, fastv_ratio=ratio)
    for side in ("left", "right"):
        ids, mask = pad_batch(seqs, side)
        cache = model(input_ids=ids, attention_mask=mask, pixel_values=pix, use_cache=True).cache
        kept = cache.routing.kept_image_positions(ids == IMAGE_TOKEN_ID)
        offsets = [ids.shape[1] - len(s) if side == "left" else 0 for s in seqs]
        assert [[p - o for p in ks] for ks, o in zip(kept, offsets)] == expected, side
    assert [len(e) for e in expected] == [round(ratio * 16), round(ratio * 32), 0]


# ----------------------------------------------------------------------------- cache and batching
def test_layers_after_pruning_cache_fewer_positions():
    base = make_tiny_llava()
    n = num_image_tokens(base)
    ids, pix = torch.tensor([sample_ids(1, n)]), random_pixels(1, base)
    full, n_text = ids.shape[1], ids.shape[1] - n
    expect = {
        "fastv": [full] * 2 + [n_text + n // 2] * 4,
        "vtw": [full] * 3 + [n_text] * 3,
        "lf+fastv": [full] * 2 + [n_text + n // 2] + [n_text] * 2 + [n_text + n // 2],
    }
    for name, cfg in PEERS.items():
        cache = wrap(base, **cfg)(input_ids=ids, pixel_values=pix, use_cache=True).cache
        assert [cache.layers[i].get_seq_length() for i in range(N)] == expect[name], name


def test_composition_side_branch_sees_only_kept_image_tokens():
    base = make_tiny_llava()
    n = num_image_tokens(base)
    ids, pix = torch.tensor([sample_ids(1, n)]), random_pixels(1, base)
    model = wrap(base, **PEERS["lf+fastv"])
    seen = []
    handle = model.side_branch.layers[0].register_forward_hook(lambda m, a, o: seen.append(o.shape[1]))
    cache = model(input_ids=ids, pixel_values=pix, use_cache=True).cache
    handle.remove()
    kept = cache.routing.kept_image_positions(ids == IMAGE_TOKEN_ID)[0]
    assert len(kept) == n // 2
    prefix_before_image = int((ids[0] == IMAGE_TOKEN_ID).nonzero().min())
    assert seen == [prefix_before_image + n // 2]  # system tokens + the kept image tokens, nothing dropped


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("name", list(PEERS))
def test_batched_equals_per_sample(name, side):
    base = make_tiny_llava()
    seqs, pix, per_pix = batch_of_three(base)
    model = wrap(base, **PEERS[name])
    ids, mask = pad_batch(seqs, side)
    batched = model(input_ids=ids, attention_mask=mask, pixel_values=pix).logits
    for i, seq in enumerate(seqs):
        single = model(input_ids=torch.tensor([seq]), pixel_values=per_pix[i]).logits[0]
        # dropped image positions keep their layer k-1 states in both, so every real position compares
        assert_close(batched[i][mask[i].bool()], single)


@pytest.mark.parametrize("name", list(PEERS))
def test_cached_greedy_decode_equals_recompute(name):
    base = make_tiny_llava()
    seqs, pix, _ = batch_of_three(base)
    model = wrap(base, **PEERS[name])
    ids, mask = pad_batch(seqs, "left")
    assert_cached_decode_equals_recompute(model, ids, mask, pix, max_new_tokens=4)


def test_manual_decode_with_returned_cache_matches_full_forward():
    base = make_tiny_llava()
    n = num_image_tokens(base)
    ids, pix = torch.tensor([sample_ids(1, n)]), random_pixels(1, base)
    model = wrap(base, **PEERS["lf+fastv"])
    out = model(input_ids=ids, pixel_values=pix, use_cache=True)
    nxt = torch.tensor([[17]])
    step = model(input_ids=nxt, cache=out.cache, use_cache=True).logits[:, -1]
    # without a cache, FastV must be told where the prompt ends (it ranks by the prompt's last token)
    full = model(input_ids=torch.cat([ids, nxt], 1), pixel_values=pix, prompt_len=ids.shape[1]).logits[:, -1]
    assert_close(step, full)
    moved = model(input_ids=torch.cat([ids, nxt], 1), pixel_values=pix).logits[:, -1]  # ranks by the new token
    assert not torch.allclose(moved, full)


def test_beam_search_with_pruning_uses_the_cache():
    base = make_tiny_llava()
    n = num_image_tokens(base)
    ids, pix = torch.tensor([sample_ids(1, n)]), random_pixels(1, base)
    model = wrap(base, **PEERS["lf+fastv"])
    kw = dict(input_ids=ids, pixel_values=pix, max_new_tokens=3, suppress_tokens=[IMAGE_TOKEN_ID], eos_token_id=None,
              pad_token_id=0, num_beams=2, do_sample=False)
    assert torch.equal(model.generate(**kw), model.generate(**kw, use_cache=False))


def test_peers_have_no_trainable_side_branch():
    base = make_tiny_llava()
    for cfg in (PEERS["fastv"], PEERS["vtw"]):
        model = wrap(base, **cfg)
        assert model.side_branch is None and model.trainable_parameter_count()[0] == 0
        with pytest.raises(ValueError, match="no side branch to save"):
            model.save_pretrained("unused")


# ----------------------------------------------------------------------------- configuration
def test_peer_configs_resolve_and_round_trip():
    from dpvr import DPVRConfig

    fastv = DPVRConfig(variant="fastv")
    assert (fastv.fastv_k, fastv.fastv_ratio) == (2, 0.5)  # FastV's defaults (K = 2, R = 50 %)
    plan = fastv.resolve(8)
    assert plan.modes == ["full"] * 8 and (plan.prune_layer, plan.keep_ratio, plan.side_depth) == (2, 0.5, 0)
    vtw = DPVRConfig(variant="vtw", split=5).resolve(8)
    assert vtw.modes == ["full"] * 5 + ["text"] * 3 and vtw.side_depth == 0 and vtw.prune_layer is None
    assert not DPVRConfig(variant="vtw", split=8).resolve(8).routed
    both = DPVRConfig(variant="lf", split=5, fastv_k=3, fastv_ratio=1)
    assert both.fastv_ratio == 1.0 and isinstance(both.fastv_ratio, float)
    plan = both.resolve(8)
    assert plan.modes == ["full"] * 5 + ["text", "text", "fuse"] and plan.prune_layer == 3 and plan.side_depth == 1
    for cfg in (fastv, DPVRConfig(variant="vtw", split=5), both):
        assert DPVRConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(variant="fastv", split=3), "variant 'fastv' has no split"),
        (dict(variant="vtw"), "needs its withdrawal layer"),
        (dict(variant="vtw", split=3, fastv_k=2), "do not apply to variant 'vtw'"),
        (dict(variant="vanilla", fastv_ratio=0.5), "do not apply to variant 'vanilla'"),
        (dict(variant="fastv", fastv_k=0), "fastv_k must be an integer layer index >= 1"),
        (dict(variant="fastv", fastv_k=1.5), "fastv_k must be an integer"),
        (dict(variant="fastv", fastv_ratio=1.5), r"fastv_ratio must be a number in \[0, 1\]"),
        (dict(variant="fastv", fastv_ratio=True), "fastv_ratio must be a number"),
        (dict(variant="fastv", num_fusion_layers=1), "only for variant 'lf'"),
    ],
)
def test_peer_field_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        dpvr.DPVRConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(variant="fastv", fastv_k=8), r"fastv_k=8 is outside 1\.\.7"),
        (dict(variant="lf", split=3, fastv_k=4), r"fastv_k=4 is after split=3.*fastv_k <= 3"),
        (dict(variant="vtw", split=9), r"split=9 is outside 1\.\.7"),
    ],
)
def test_peer_errors_against_the_backbone(kwargs, message):
    with pytest.raises(ValueError, match=message):
        dpvr.DPVRConfig(**kwargs).resolve(8)


@pytest.mark.parametrize("cfg", [
    dict(variant="kv", split=3, fastv_k=3),  # pruning right at the split
    dict(variant="pc", split=3, fastv_k=1, fastv_ratio=0.25),
    dict(variant="ideal", split=2, fastv_k=2),
], ids=["kv-k=s", "pc", "ideal"])
def test_fastv_composes_with_every_dpvr_variant(cfg):
    base = make_tiny_llava()
    seqs, pix, per_pix = batch_of_three(base)
    model = wrap(base, **cfg)
    ids, mask = pad_batch(seqs, "right")
    batched = model(input_ids=ids, attention_mask=mask, pixel_values=pix).logits
    for i, seq in enumerate(seqs):
        assert_close(batched[i][mask[i].bool()], model(input_ids=torch.tensor([seq]), pixel_values=per_pix[i]).logits[0])
    ids, mask = pad_batch(seqs, "left")
    kw = dict(input_ids=ids, attention_mask=mask, pixel_values=pix, max_new_tokens=3, do_sample=False,
              suppress_tokens=[IMAGE_TOKEN_ID], pad_token_id=0, eos_token_id=None)
    assert torch.equal(model.generate(**kw), model.generate(**kw, use_cache=False))


def test_kv_equals_pc_at_text_positions_after_pruning():
    # as without pruning (test_engine): two code paths over the kept view, one answer for text
    base = make_tiny_llava()
    seqs, pix, _ = batch_of_three(base)
    ids, mask = pad_batch(seqs, "left")
    text = mask.bool() & (ids != IMAGE_TOKEN_ID)
    kw = dict(input_ids=ids, attention_mask=mask, pixel_values=pix)
    kv = wrap(base, variant="kv", split=3, fastv_k=2)(**kw).logits
    pc = wrap(base, variant="pc", split=3, fastv_k=2)(**kw).logits
    assert_close(kv[text], pc[text])


@pytest.mark.parametrize("name", list(PEERS))
def test_sdpa_and_eager_agree(name):
    seqs, pix, _ = batch_of_three(make_tiny_llava())
    ids, mask = pad_batch(seqs, "left")
    outs = [wrap(make_tiny_llava(attn=a), **PEERS[name])(input_ids=ids, attention_mask=mask, pixel_values=pix).logits
            for a in ("sdpa", "eager")]
    assert_close(outs[0][mask.bool()], outs[1][mask.bool()])
