"""Gemma 3's masks through the routing engine: each layer keeps its own mask type in every view.

Gemma 3 alternates sliding-window and full-attention layers and lets image tokens attend
bidirectionally within their image. The parametrized suite (`test_families.py`) holds the gemma3
family to cached == recompute, mixed batch == per-sample, side branch at init == layer s, sdpa ==
eager; these tests hold it to the unrouted model itself: every routed layer sees, at each query, the
keys its unrouted layer of the same type sees (window by original position, image blocks), at
prefill and decode, and FastV ranks by the attention a sliding layer actually computes.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import dpvr
from families import FAMILIES, IMAGE, LAYERS, PAD, SPLIT

METHODS = {
    "ideal": dict(variant="ideal", split=SPLIT),
    "kv": dict(variant="kv", split=SPLIT),
    "fastv": dict(variant="fastv", fastv_k=SPLIT - 1),
    "lf+fastv": dict(variant="lf", split=SPLIT + 1, fastv_k=SPLIT),
}


@pytest.fixture(scope="module")
def gemma3():
    fam = FAMILIES["gemma3"]
    base = fam.make(attn="eager")
    return fam, base, fam.samples(base)


def _wrap(base, **cfg):
    return dpvr.get_dpvr_model(base, dpvr.DPVRConfig(**cfg))


def _record_masks(layers, run):
    """Run ``run()`` and return ({layer index: [attention_mask of each call]}, its result)."""
    seen = {i: [] for i in range(len(layers))}
    hooks = [layer.register_forward_pre_hook(lambda m, a, kw, i=i: seen[i].append(kw["attention_mask"]), with_kwargs=True)
             for i, layer in enumerate(layers)]
    try:
        out = run()
    finally:
        for h in hooks:
            h.remove()
    return seen, out


@pytest.mark.parametrize("method", list(METHODS))
def test_each_layer_sees_the_keys_its_unrouted_layer_sees(gemma3, method):
    """Gemma 3: at every query a routed layer runs (full view, text view, kept view, text queries over full keys;
    prefill and decode), it sees exactly the keys the unrouted layer of the same type sees at that position among
    the keys its view holds — causal, the sliding window measured in original positions, bidirectional within an
    image."""
    from torch.nn.functional import pad

    fam, base, samples = gemma3
    batch = fam.collate(samples, "left")
    model = _wrap(base, **METHODS[method])
    layers, steps = model.backbone.layers, 3
    kw = dict(batch, max_new_tokens=steps, return_dict_in_generate=True, suppress_tokens=[IMAGE], pad_token_id=PAD,
              eos_token_id=None, do_sample=False)
    with torch.no_grad():
        routed, out = _record_masks(layers, lambda: model.generate(**kw))
        whole = dict(batch, input_ids=out.sequences, attention_mask=pad(batch["attention_mask"], (0, steps), value=1),
                     token_type_ids=pad(batch["token_type_ids"], (0, steps)))
        vanilla, _ = _record_masks(layers, lambda: base(**whole))  # rows L.. are the decode queries
    length = batch["input_ids"].shape[1]
    real = whole["attention_mask"].bool()  # (B, L + steps)
    text = ~model.backbone.visual_mask(batch["input_ids"])
    state = out.cache.routing
    kept = set(range(model.plan.prune_layer, LAYERS)) if model.plan.prune_layer is not None else set()
    checked = 0
    for i in range(LAYERS):
        mode = model.plan.modes[i]
        allowed_v = vanilla[i][0][:, 0] == 0  # (B, L + steps, L + steps)
        assert len(routed[i]) == steps
        for step, mask in enumerate(routed[i]):
            allowed = mask[:, 0] == 0  # (B, q, K)
            for b in range(allowed.shape[0]):
                if mode == "text":
                    prompt_keys = torch.nonzero(text[b])[:, 0]
                    prompt_keys = pad(prompt_keys, (0, state.text_key_valid.shape[1] - len(prompt_keys)), value=0)
                    prompt_valid = state.text_key_valid[b]
                elif i in kept:
                    prompt_keys, prompt_valid = state.kept_positions[b], state.kept_key_valid[b]
                elif step > 0:
                    continue  # full view at decode: the unrouted layer's own cache and mask helper
                else:
                    prompt_keys, prompt_valid = torch.arange(length), real[b, :length]
                if step == 0:  # prefill: the view's slots query (kv: the text positions query the full view)
                    keys, valid = prompt_keys, prompt_valid
                    queries, rows = keys, valid
                    if mode == "kv" and i not in kept:
                        queries = torch.nonzero(text[b])[:, 0]
                        rows = torch.ones(len(queries), dtype=torch.bool)
                else:  # decode: the newest token queries the view's prompt slots and the generated tokens
                    new = torch.arange(length, length + step)
                    keys, valid = torch.cat([prompt_keys, new]), torch.cat([prompt_valid, torch.ones(step, dtype=torch.bool)])
                    queries, rows = new[-1:], torch.ones(1, dtype=torch.bool)
                expected = allowed_v[b][queries][:, keys] & valid[None, :]
                rows = rows & real[b, queries]
                got = allowed[b, : len(queries), : len(keys)]
                assert torch.equal(got[rows], expected[rows]), (i, mode, step, b)
                checked += int(rows.sum())
    assert checked > 0


def test_fastv_scores_are_the_sliding_layers_own_attention(gemma3):
    """FastV ranks by the attention layer k-1 computes: at a sliding-window layer, only keys inside the window."""
    from dpvr.engine.router import last_query_attention

    fam, base, samples = gemma3
    batch = fam.collate(samples, "left")
    k = 3
    attn = base.model.language_model.layers[k - 1].self_attn
    assert attn.layer_type == "sliding_attention"
    seen = {}
    h = attn.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    with torch.no_grad():
        reference = base(**batch, output_attentions=True).attentions[k - 1][:, :, -1, :].mean(1)  # (B, L)
    h.remove()
    with torch.no_grad():
        scores = last_query_attention(attn, seen["hidden_states"], seen["position_embeddings"], batch["attention_mask"],
                                      layer_mask=seen["attention_mask"])
        unwindowed = last_query_attention(attn, seen["hidden_states"], seen["position_embeddings"],
                                          batch["attention_mask"])
    assert_close(scores, reference.float(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(unwindowed, reference.float(), atol=1e-3)  # the window matters in this prompt
