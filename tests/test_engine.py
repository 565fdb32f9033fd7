"""The routing engine against the unwrapped model: equivalences, gradients, cache, batching."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.testing import assert_close

import dpvr
from conftest import (IMAGE_TOKEN_ID, assert_cached_decode_equals_recompute, make_tiny_llava, num_image_tokens,
                      pad_batch, random_pixels, sample_ids)

ROUTED = ["lf", "pc", "kv", "ideal"]
SPLIT = 3  # of 6 layers


def routed(base, variant, split=SPLIT, **kw):
    return dpvr.get_dpvr_model(base, dpvr.DPVRConfig(variant=variant, split=None if variant == "vanilla" else split, **kw))


def one_image_prompt(base, seed=0):
    ids = torch.tensor([sample_ids(1, num_image_tokens(base), seed=seed)])
    return ids, random_pixels(1, base, seed=seed)


class Recorder:
    """Records the output of chosen modules by forward hooks."""

    def __init__(self, modules: dict):
        self.out, self.handles = {}, []
        for name, mod in modules.items():
            self.handles.append(mod.register_forward_hook(lambda m, a, o, name=name: self.out.__setitem__(name, o)))

    def close(self):
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_vanilla_and_unrouted_split_equal_the_unwrapped_model_exactly(attn):
    base = make_tiny_llava(attn=attn)
    ids, pix = one_image_prompt(base)
    ref = base(input_ids=ids, pixel_values=pix).logits
    assert torch.equal(routed(base, "vanilla")(input_ids=ids, pixel_values=pix).logits, ref)
    n = base.config.text_config.num_hidden_layers
    for variant in ROUTED:
        model = routed(base, variant, split=n)  # split = N routes nothing
        assert model.side_branch is None
        assert torch.equal(model(input_ids=ids, pixel_values=pix).logits, ref), variant


@pytest.mark.parametrize("variant", ROUTED)
def test_shallow_stack_is_bit_identical_to_vanilla(variant):
    base = make_tiny_llava()
    ids, pix = one_image_prompt(base)
    layers = base.model.language_model.layers
    rec = Recorder({i: layers[i] for i in range(SPLIT)})
    base(input_ids=ids, pixel_values=pix)
    vanilla = dict(rec.out)
    rec.out.clear()
    routed(base, variant)(input_ids=ids, pixel_values=pix)
    rec.close()
    for i in range(SPLIT):
        assert torch.equal(rec.out[i], vanilla[i]), f"layer {i}"


@pytest.mark.parametrize("depth", [1, 2])
def test_side_branch_at_init_reproduces_vanilla_layers_at_image_positions(depth):
    base = make_tiny_llava()
    ids, pix = one_image_prompt(base)
    image_pos = (ids[0] == IMAGE_TOKEN_ID).nonzero().squeeze(1)
    target_layer = base.model.language_model.layers[SPLIT + depth - 1]
    rec = Recorder({"vanilla": target_layer})
    base(input_ids=ids, pixel_values=pix)
    rec.close()
    model = routed(base, "lf", side_depth=depth)
    rec_side = Recorder({"side": model.side_branch.layers[-1]})
    model(input_ids=ids, pixel_values=pix)
    rec_side.close()
    assert_close(rec_side.out["side"][0, image_pos], rec.out["vanilla"][0, image_pos])


def test_lf_with_every_deep_layer_fusing_equals_pc():
    base = make_tiny_llava()
    ids, pix = one_image_prompt(base)
    n = base.config.text_config.num_hidden_layers
    lf_all = routed(base, "lf", fusion_layers=list(range(SPLIT, n)))
    pc = routed(base, "pc")
    assert lf_all.plan.modes == pc.plan.modes
    assert_close(lf_all(input_ids=ids, pixel_values=pix).logits, pc(input_ids=ids, pixel_values=pix).logits, rtol=0, atol=0)


def test_kv_equals_pc_at_text_positions():
    # PC resets the image positions to the side output before every deep layer, so the image K/V
    # that text sees are exactly what KV projects from the side output: two code paths, one answer.
    base = make_tiny_llava()
    ids, pix = one_image_prompt(base)
    text = ids[0] != IMAGE_TOKEN_ID
    kv = routed(base, "kv")(input_ids=ids, pixel_values=pix).logits[0, text]
    pc = routed(base, "pc")(input_ids=ids, pixel_values=pix).logits[0, text]
    assert_close(kv, pc)


def test_sparse_fusion_set_routes_as_configured():
    base = make_tiny_llava(num_layers=8)
    model = routed(base, "lf", split=3, fusion_layers=[4, 7])
    assert model.plan.modes == ["full"] * 3 + ["text", "fuse", "text", "text", "fuse"]
    ids, pix = one_image_prompt(base)
    calls = []
    layers = base.model.language_model.layers
    handles = [layers[i].register_forward_hook(lambda m, a, o, i=i: calls.append((i, o.shape[1]))) for i in range(8)]
    model(input_ids=ids, pixel_values=pix)
    for h in handles:
        h.remove()
    full_len, text_len = ids.shape[1], int((ids != IMAGE_TOKEN_ID).sum())
    assert calls == [(0, full_len), (1, full_len), (2, full_len), (3, text_len), (4, full_len),
                     (5, text_len), (6, text_len), (7, full_len)]


def llava_labels(ids: torch.Tensor) -> torch.Tensor:
    """-100 on system, image and prompt tokens, including the token right after the last image token."""
    labels = ids.clone()
    last_image = int((ids[0] == IMAGE_TOKEN_ID).nonzero().max())
    labels[:, : last_image + 2] = -100
    return labels


@pytest.mark.parametrize("variant", ROUTED)
def test_gradient_facts_under_llava_labels(variant):
    base = make_tiny_llava()
    ids, pix = one_image_prompt(base)
    model = routed(base, variant)
    model.train()
    out = model(input_ids=ids, pixel_values=pix, labels=llava_labels(ids))
    out.loss.backward()
    side_grads = [p.grad for p in model.side_branch.parameters()]
    assert all(g is not None for g in side_grads)
    nonzero = sum(int(torch.count_nonzero(g)) for g in side_grads)
    if variant == "ideal":
        assert nonzero == 0  # text never sees the side branch (paper, Appendix A)
    else:
        assert nonzero > 0
    assert all(p.grad is None for p in model.base.parameters()), "the frozen backbone got gradients"


def test_only_side_branch_is_trainable():
    base = make_tiny_llava()
    model = routed(base, "lf", side_depth=2)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(n.startswith("side_branch.layers.") for n in names)
    layer = base.model.language_model.layers[0]
    assert model.trainable_parameter_count()[0] == 2 * sum(p.numel() for p in layer.parameters())


@pytest.mark.parametrize("variant", ROUTED)
def test_cached_greedy_decode_equals_recompute(variant):
    base = make_tiny_llava()
    n = num_image_tokens(base)
    model = routed(base, variant)
    cases = [
        ([sample_ids(1, n, seed=1)], random_pixels(1, base, seed=1)),
        ([sample_ids(1, n, seed=2), sample_ids(2, n, seed=3, text=(9, 10)), sample_ids(0, n, seed=4)],
         random_pixels(3, base, seed=2)),
    ]
    for seqs, pix in cases:
        ids, mask = pad_batch(seqs, "left")
        assert_cached_decode_equals_recompute(model, ids, mask, pix, max_new_tokens=6)


def test_text_layers_cache_no_image_positions():
    base = make_tiny_llava()
    ids, pix = one_image_prompt(base)
    model = routed(base, "lf")
    cache = model(input_ids=ids, pixel_values=pix, use_cache=True).cache
    lengths = [cache.layers[i].get_seq_length() for i in range(len(model.plan.modes))]
    n_text = int((ids != IMAGE_TOKEN_ID).sum())
    assert lengths == [ids.shape[1] if m != "text" else n_text for m in model.plan.modes]


def test_manual_decode_with_returned_cache_matches_full_forward():
    base = make_tiny_llava()
    ids, pix = one_image_prompt(base)
    model = routed(base, "lf")
    out = model(input_ids=ids, pixel_values=pix, use_cache=True)
    nxt = torch.tensor([[17]])
    step = model(input_ids=nxt, cache=out.cache, use_cache=True).logits[:, -1]
    full = model(input_ids=torch.cat([ids, nxt], 1), pixel_values=pix).logits[:, -1]
    assert_close(step, full)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("variant", ["vanilla"] + ROUTED)
def test_batched_equals_per_sample(variant, side):
    base = make_tiny_llava()
    n = num_image_tokens(base)
    seqs = [sample_ids(1, n, seed=1), sample_ids(2, n, seed=2), sample_ids(0, n, seed=3, text=(9, 10, 11, 12, 13, 14))]
    pix = random_pixels(3, base, seed=5)
    per_sample_pix = [pix[:1], pix[1:3], None]
    model = routed(base, variant)
    ids, mask = pad_batch(seqs, side)
    batched = model(input_ids=ids, attention_mask=mask, pixel_values=pix).logits
    for i, seq in enumerate(seqs):
        single = model(input_ids=torch.tensor([seq]), pixel_values=per_sample_pix[i]).logits[0]
        assert_close(batched[i][mask[i].bool()], single)


@pytest.mark.parametrize("variant", ROUTED)
def test_sdpa_and_eager_agree(variant):
    ids, pix = one_image_prompt(make_tiny_llava())
    outs = [routed(make_tiny_llava(attn=a), variant)(input_ids=ids, pixel_values=pix).logits for a in ("sdpa", "eager")]
    assert_close(outs[0], outs[1])


def test_logits_to_keep_and_loss():
    base = make_tiny_llava()
    ids, pix = one_image_prompt(base)
    model = routed(base, "lf")
    full = model(input_ids=ids, pixel_values=pix, labels=llava_labels(ids))
    last = model(input_ids=ids, pixel_values=pix, logits_to_keep=1).logits
    assert last.shape[1] == 1
    assert_close(last[:, 0], full.logits[:, -1])
    labels = llava_labels(ids)[:, 1:]
    expected = torch.nn.functional.cross_entropy(full.logits[0, :-1], labels[0], ignore_index=-100)
    assert_close(full.loss, expected)


def test_beam_search_and_sampling_run_with_the_cache():
    base = make_tiny_llava()
    ids, pix = one_image_prompt(base)
    model = routed(base, "lf")
    kw = dict(input_ids=ids, pixel_values=pix, max_new_tokens=4, suppress_tokens=[IMAGE_TOKEN_ID], eos_token_id=None,
              pad_token_id=0)
    beams = model.generate(**kw, num_beams=3, do_sample=False)
    beams_nocache = model.generate(**kw, num_beams=3, do_sample=False, use_cache=False)
    assert torch.equal(beams, beams_nocache)
    torch.manual_seed(0)
    sampled = model.generate(**kw, do_sample=True, top_k=5)
    assert sampled.shape == (1, ids.shape[1] + 4)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    grads = {}
    for ckpt in (False, True):
        base = make_tiny_llava()
        ids, pix = one_image_prompt(base)
        model = routed(base, "kv")
        model.train()
        if ckpt:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            assert base.model.language_model.layers[SPLIT].gradient_checkpointing
            assert model.side_branch.layers[0].gradient_checkpointing
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model(input_ids=ids, pixel_values=pix, labels=llava_labels(ids)).loss.backward()
        # the routed kv layer checkpoints non-reentrantly itself (torch warns when use_reentrant is left out)
        assert not [w for w in caught if "use_reentrant" in str(w.message)]
        grads[ckpt] = [p.grad.clone() for p in model.side_branch.parameters()]
    for a, b in zip(grads[False], grads[True]):
        assert_close(a, b)


@pytest.mark.parametrize("cfg", [dict(variant="lf", split=SPLIT), dict(variant="lf", split=SPLIT, fastv_k=2)])
def test_batched_beam_search_equals_per_sample_beam_search(cfg):
    """Two different prompts (different lengths, left padding) in one beam search: the cache's routing
    state is expanded per beam and reordered every step with rows that differ between the samples."""
    base = make_tiny_llava()
    model = dpvr.get_dpvr_model(base, dpvr.DPVRConfig(**cfg))
    n = num_image_tokens(base)
    seqs = [sample_ids(1, n, seed=1), sample_ids(1, n, seed=2, text=(9, 10, 11, 12, 13, 14, 15))]
    pix = random_pixels(2, base, seed=3)
    kw = dict(max_new_tokens=5, num_beams=3, num_return_sequences=3, do_sample=False, suppress_tokens=[IMAGE_TOKEN_ID],
              eos_token_id=None, pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    ids, mask = pad_batch(seqs, side="left")
    batched = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pix, **kw)
    for i, seq in enumerate(seqs):
        alone = model.generate(input_ids=torch.tensor([seq]), pixel_values=pix[i:i + 1], **kw)
        rows = slice(3 * i, 3 * i + 3)
        assert torch.equal(batched.sequences[rows, -len(seq) - 5:], alone.sequences), i
        # the beams' scores see every key: a row of another sample's routing state would change them
        assert_close(batched.sequences_scores[rows], alone.sequences_scores, rtol=1e-5, atol=1e-6)


def test_cache_routing_state_follows_beam_reorder_and_expansion():
    from dpvr.engine.cache import DPVRCache, RoutingState

    cache = DPVRCache()
    k = torch.arange(2 * 1 * 3 * 2, dtype=torch.float32).reshape(2, 1, 3, 2)  # (B, heads, L, d)
    cache.update(k, k.clone(), 0)
    valid = torch.tensor([[True, False, True], [False, True, True]])
    kept = torch.tensor([[0, 4, 5], [1, 2, 6]])
    cache.routing = RoutingState(valid, prompt_len=7, kept_key_valid=~valid, kept_positions=kept)
    cache.batch_repeat_interleave(2)  # rows a a b b
    assert torch.equal(cache.routing.text_key_valid, valid.repeat_interleave(2, 0))
    assert torch.equal(cache.routing.kept_positions, kept.repeat_interleave(2, 0))
    order = torch.tensor([3, 0, 2, 1])
    cache.reorder_cache(order)
    expected = valid.repeat_interleave(2, 0)[order]
    assert torch.equal(cache.routing.text_key_valid, expected)
    assert torch.equal(cache.routing.kept_key_valid, ~expected)
    assert torch.equal(cache.routing.kept_positions, kept.repeat_interleave(2, 0)[order])
    assert torch.equal(cache.layers[0].keys[:, 0, :, :], k.repeat_interleave(2, 0)[order][:, 0])
    assert cache.routing.prompt_len == 7
    cache.batch_select_indices(torch.tensor([1, 2]))
    assert torch.equal(cache.routing.text_key_valid, expected[[1, 2]])
