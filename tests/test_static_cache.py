"""Fixed-shape decode on `DPVRStaticCache`: equal to the dynamic cache, compiled equal to eager."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import dpvr
from conftest import IMAGE_TOKEN_ID, PAD_TOKEN_ID, make_tiny_llava, num_image_tokens, pad_batch, random_pixels, sample_ids
from dpvr.engine.static_cache import DPVRStaticCache

SPLIT = 3  # of 6 layers


def wrap(base, variant, split=SPLIT):
    kw = {"fastv_k": 2, "fastv_ratio": 0.5} if variant in ("fastv", "lf+fastv") else {}
    if variant == "lf+fastv":
        variant = "lf"
    return dpvr.get_dpvr_model(base, dpvr.DPVRConfig(variant=variant, split=None if variant in ("vanilla", "fastv") else split, **kw))


def cases(base):
    n = num_image_tokens(base)
    return {
        "batch1": ([sample_ids(1, n, seed=1)], random_pixels(1, base, seed=1)),
        "padded": ([sample_ids(1, n, seed=2), sample_ids(2, n, seed=3, text=(9, 10)), sample_ids(0, n, seed=4)],
                   random_pixels(3, base, seed=2)),
    }


def greedy(model, seqs, pix, new_tokens=5, **kw):
    ids, mask = pad_batch(seqs, "left")
    return model.generate(input_ids=ids, attention_mask=mask, pixel_values=pix, max_new_tokens=new_tokens,
                          do_sample=False, suppress_tokens=[IMAGE_TOKEN_ID], output_logits=True,
                          return_dict_in_generate=True, pad_token_id=PAD_TOKEN_ID, eos_token_id=None, **kw)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("variant", ["vanilla", "lf", "pc", "kv", "lf+fastv"])
def test_static_cache_decode_equals_dynamic_cache(variant, attn):
    base = make_tiny_llava(attn=attn)
    model = wrap(base, variant)
    for name, (seqs, pix) in cases(base).items():
        dynamic = greedy(model, seqs, pix)
        static = greedy(model, seqs, pix, dpvr_static_cache=True)
        assert isinstance(static.past_key_values if hasattr(static, "past_key_values") else static.cache, DPVRStaticCache)
        assert torch.equal(static.sequences, dynamic.sequences), name
        assert_close(torch.stack(static.logits), torch.stack(dynamic.logits), rtol=1e-5, atol=1e-6)


def test_cache_implementation_static_selects_the_per_layer_cache():
    base = make_tiny_llava()
    seqs, pix = cases(base)["padded"]
    model = wrap(base, "lf")
    out = greedy(model, seqs, pix, cache_implementation="static")
    assert isinstance(out.cache, DPVRStaticCache)
    assert torch.equal(out.sequences, greedy(model, seqs, pix).sequences)


def test_static_buffers_are_per_layer_and_text_layers_hold_no_image_positions():
    base = make_tiny_llava()
    ids = torch.tensor([sample_ids(1, num_image_tokens(base), seed=1)])
    model = wrap(base, "lf")
    cache = DPVRStaticCache(model.text_config, max_new_tokens=4)
    model(input_ids=ids, pixel_values=random_pixels(1, base, seed=1), cache=cache, use_cache=True)
    n_text = int((ids != IMAGE_TOKEN_ID).sum())
    sizes = [layer.keys.shape[2] for layer in cache.layers]
    assert sizes == [(n_text if m == "text" else ids.shape[1]) + 4 for m in model.plan.modes]
    step = model(input_ids=torch.tensor([[17]]), cache=cache, use_cache=True)
    assert [layer.keys.shape[2] for layer in step.cache.layers] == sizes  # fixed shapes: nothing grows


def test_static_cache_refuses_more_tokens_than_it_has_room_for():
    base = make_tiny_llava()
    model = wrap(base, "lf")
    with pytest.raises(ValueError, match="max_new_tokens"):
        DPVRStaticCache(model.text_config, max_new_tokens=0)
    ids = torch.tensor([sample_ids(1, num_image_tokens(base), seed=1)])
    cache = DPVRStaticCache(model.text_config, max_new_tokens=1)
    model(input_ids=ids, pixel_values=random_pixels(1, base, seed=1), cache=cache)
    model(input_ids=torch.tensor([[17]]), cache=cache)
    with pytest.raises(ValueError, match="room for 1 new tokens"):
        model(input_ids=torch.tensor([[18]]), cache=cache)


@pytest.mark.parametrize("variant", ["lf", "kv"])
def test_compiled_decode_equals_eager_token_for_token(variant):
    """torch.compile of the decode step (one graph, no breaks, no recompiles) == eager, on a padded batch."""
    torch._dynamo.reset()
    base = make_tiny_llava(num_layers=4)
    model = wrap(base, variant, split=2)
    seqs, pix = cases(base)["padded"]
    eager = greedy(model, seqs, pix, dpvr_static_cache=True)
    model.compile_decode(backend="eager", fullgraph=True)  # tracing is what can break; codegen is torch's
    try:
        frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        compiled = greedy(model, seqs, pix, dpvr_static_cache=True)
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - frames == 1  # one graph for every step
    finally:
        model.compile_decode(backend=None)
        torch._dynamo.reset()
    assert torch.equal(compiled.sequences, eager.sequences)
    assert_close(torch.stack(compiled.logits), torch.stack(eager.logits), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_inductor_compiled_decode_equals_eager_on_cpu():
    """The code the CPU bench times: inductor's default mode (generated C++ kernels), not only dynamo's trace."""
    torch._dynamo.reset()
    base = make_tiny_llava(num_layers=2)
    model = wrap(base, "lf", split=1)
    seqs, pix = cases(base)["padded"]
    eager = greedy(model, seqs, pix, new_tokens=3, dpvr_static_cache=True)
    model.compile_decode(fullgraph=True)
    try:
        compiled = greedy(model, seqs, pix, new_tokens=3, dpvr_static_cache=True)
    finally:
        model.compile_decode(backend=None)
        torch._dynamo.reset()
    assert torch.equal(compiled.sequences, eager.sequences)
    assert_close(torch.stack(compiled.logits), torch.stack(eager.logits), rtol=1e-4, atol=1e-5)


def test_flash_attention_2_without_the_package_is_one_clear_error():
    if __import__("importlib").util.find_spec("flash_attn") is not None:
        pytest.skip("flash_attn is installed here: see test_flash_attention_2_matches_sdpa")
    base = make_tiny_llava()
    base.config.text_config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="flash_attn package"):
        wrap(base, "lf")


@pytest.mark.parametrize("variant", ["lf", "kv"])
def test_flash_attention_2_matches_sdpa(variant):
    pytest.importorskip("flash_attn")
    if not torch.cuda.is_available():
        pytest.skip("flash_attention_2 needs a CUDA device")
    seqs, pix = cases(make_tiny_llava())["padded"]
    ids, mask = pad_batch(seqs, "left")
    outs = {}
    for attn in ("sdpa", "flash_attention_2"):
        base = make_tiny_llava(attn=attn).to("cuda", torch.bfloat16)
        if variant == "kv" and attn == "flash_attention_2":
            with pytest.raises(ValueError, match="explicit mask"):
                wrap(base, variant)
            return
        model = wrap(base, variant)
        outs[attn] = model(input_ids=ids.cuda(), attention_mask=mask.cuda(), pixel_values=pix.cuda().bfloat16()).logits
    m = mask.cuda().bool()
    assert_close(outs["flash_attention_2"][m].float(), outs["sdpa"][m].float(), rtol=2e-2, atol=2e-2)
