"""kv layers' attention at prefill: the mask-free split (KVSplitBias) against the explicit mask it replaces."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

import dpvr
import dpvr.engine.router as router
from conftest import IMAGE_TOKEN_ID, make_tiny_llava, num_image_tokens, pad_batch, random_pixels, sample_ids
from dpvr.engine.index import RoutingIndex
from dpvr.engine.kv_attention import KVSplitBias, dense_kv_mask, kv_attention_mask

SPLIT = 3  # of 6 layers


@pytest.mark.parametrize("prefix,image,text", [(3, 5, 7), (0, 5, 4), (4, 5, 4), (1, 1, 2), (6, 16, 11)])
def test_split_attention_equals_the_masked_call_with_gradients(prefix, image, text):
    g = torch.Generator().manual_seed(prefix * 100 + image)
    q = torch.randn(2, 4, text, 8, dtype=torch.float64, generator=g, requires_grad=True)
    k = torch.randn(2, 4, text + image, 8, dtype=torch.float64, generator=g, requires_grad=True)
    v = torch.randn(2, 4, text + image, 8, dtype=torch.float64, generator=g, requires_grad=True)
    bias = KVSplitBias(prefix, image, text)
    split = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.3)
    grads = torch.autograd.grad(split.square().sum(), (q, k, v))
    masked = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.materialize(), scale=0.3)
    ref_grads = torch.autograd.grad(masked.square().sum(), (q, k, v))
    assert type(split) is torch.Tensor
    assert_close(split, masked, rtol=0, atol=1e-12)
    for got, ref in zip(grads, ref_grads):
        assert_close(got, ref, rtol=0, atol=1e-12)


def test_split_pattern_is_the_engines_mask_for_a_shared_image_run():
    n = 16
    ids = torch.tensor([sample_ids(1, n, seed=s) for s in range(3)])  # same layout, different tokens
    index = RoutingIndex.from_mask(ids == IMAGE_TOKEN_ID)
    bias = kv_attention_mask(index, torch.ones_like(ids), ids.shape[1], torch.float32, "sdpa")
    assert isinstance(bias, KVSplitBias) and (bias.prefix_len, bias.image_len) == index.image_block
    dense = dense_kv_mask(index, None, ids.shape[1], torch.float32) == 0  # (B, 1, Lt, L) allowed
    assert dense.shape[1:] == bias.shape[1:]
    assert torch.equal(bias.materialize().expand_as(dense), dense)


def _kv_masks(model, batch) -> list:
    """The attention_mask every kv layer's attention received in one forward."""
    seen = []
    hooks = [model.backbone.layers[i].self_attn.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["attention_mask"]), with_kwargs=True) for i in model.plan.layers_with_mode("kv")]
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _kv(base):
    return dpvr.get_dpvr_model(base, dpvr.DPVRConfig(variant="kv", split=SPLIT))


def test_kv_layers_take_the_split_only_where_it_is_exact():
    base = make_tiny_llava()
    n = num_image_tokens(base)
    same = torch.tensor([sample_ids(1, n, seed=s) for s in range(2)])
    shared = dict(input_ids=same, attention_mask=torch.ones_like(same), pixel_values=random_pixels(2, base))
    masks = _kv_masks(_kv(base), shared)
    assert len(masks) == 3 and all(isinstance(m, KVSplitBias) for m in masks)
    ids, mask = pad_batch([sample_ids(1, n, seed=0), sample_ids(1, n, text=(9, 10), seed=1)])  # padding
    padded = dict(input_ids=ids, attention_mask=mask, pixel_values=random_pixels(2, base))
    two = torch.tensor([sample_ids(2, n)])  # two images: two runs
    cases = {"padded": padded, "two images": dict(input_ids=two, pixel_values=random_pixels(2, base))}
    for name, batch in cases.items():
        masks = _kv_masks(_kv(base), batch)
        assert masks and all(type(m) is torch.Tensor for m in masks), name
    eager = make_tiny_llava(attn="eager")
    masks = _kv_masks(_kv(eager), dict(shared, pixel_values=random_pixels(2, eager)))
    assert masks and all(type(m) is torch.Tensor for m in masks)


@pytest.mark.parametrize("method", ["kv", "kv+fastv"])
def test_kv_split_equals_the_explicit_mask_end_to_end(method, monkeypatch):
    base = make_tiny_llava()
    n = num_image_tokens(base)
    ids = torch.tensor([sample_ids(1, n, seed=s) for s in range(2)])
    batch = dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=random_pixels(2, base))
    extra = dict(fastv_k=2, fastv_ratio=0.5) if method == "kv+fastv" else {}
    model = dpvr.get_dpvr_model(base, dpvr.DPVRConfig(variant="kv", split=SPLIT, **extra))
    gen = dict(batch, max_new_tokens=4, do_sample=False, suppress_tokens=[IMAGE_TOKEN_ID], output_logits=True,
               return_dict_in_generate=True, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        split_logits = model(**batch).logits
        split_gen = model.generate(**gen)
    assert isinstance(_kv_masks(model, batch)[0], KVSplitBias)
    monkeypatch.setattr(router, "kv_attention_mask",
                        lambda index, attention_mask, length, dtype, impl: dense_kv_mask(index, attention_mask, length, dtype))
    assert type(_kv_masks(model, batch)[0]) is torch.Tensor
    with torch.no_grad():
        dense_logits = model(**batch).logits
        dense_gen = model.generate(**gen)
    assert_close(split_logits, dense_logits, rtol=1e-5, atol=1e-6)
    assert torch.equal(split_gen.sequences, dense_gen.sequences)
    assert_close(torch.stack(split_gen.logits), torch.stack(dense_gen.logits), rtol=1e-5, atol=1e-6)


def test_split_bias_is_its_pattern_as_a_plain_mask():
    bias = KVSplitBias(2, 3, 4)  # text 0, 1 | image 2-4 | text 5, 6
    assert bias.shape == (1, 1, 4, 7) and bias.dtype == torch.bool
    rows = [[1, 0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1]]
    assert torch.equal(bias.materialize()[0, 0], torch.tensor(rows, dtype=torch.bool))
    assert type(bias.float()) is torch.Tensor and torch.equal(bias.float(), bias.materialize().float())
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(ValueError, match="got 6 keys"):
        F.scaled_dot_product_attention(q, torch.randn(1, 1, 6, 8), torch.randn(1, 1, 6, 8), attn_mask=bias)


def test_accelerator_path_uses_torchs_lower_right_bias_and_falls_back_inside_dispatch_modes():
    # On a non-CPU device the text after the image goes to sdpa with torch's CausalBias (its flash /
    # memory-efficient dispatch); the meta device runs that path without a GPU. Inside a TorchDispatchMode
    # (FLOP counter) torch cannot build the bias subclass: a boolean mask of the same pattern instead.
    from torch.nn.attention.bias import CausalBias
    from torch.utils.flop_counter import FlopCounterMode

    from dpvr.engine.kv_attention import _lower_right

    meta = torch.device("meta")
    assert isinstance(_lower_right(3, 8, meta), CausalBias)
    q, k = torch.empty(2, 4, 7, 8, device=meta), torch.empty(2, 4, 12, 8, device=meta)
    assert F.scaled_dot_product_attention(q, k, k, attn_mask=KVSplitBias(3, 5, 7, device=meta)).shape == q.shape
    with FlopCounterMode(display=False):
        fallback = _lower_right(3, 8, meta)
    assert type(fallback) is torch.Tensor and fallback.dtype == torch.bool
    expected = torch.arange(8)[None, :] <= torch.arange(3)[:, None] + 5  # query i sees keys <= i + (8 - 3)
    assert torch.equal(_lower_right(3, 8, torch.device("cpu")), expected)
