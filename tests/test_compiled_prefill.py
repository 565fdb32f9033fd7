"""`DPVRModel.compile_prefill`: the compiled prefill equals the eager one, and decode steps stay uncompiled.

The bit-for-bit tests trace with a counting backend that runs dynamo's graphs eagerly (what tracing can break);
one test runs inductor's CPU code generation."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import dpvr
from conftest import IMAGE_TOKEN_ID, make_tiny_llava, num_image_tokens, pad_batch, random_pixels, sample_ids

CONFIGS = {  # each traced on one batch: LF's routing and padding through LF+FastV on a padded batch
    "vanilla": (dict(variant="vanilla"), "shared"),
    "kv": (dict(variant="kv", split=3), "shared"),  # the mask-free kv split under dynamo
    "lf+fastv": (dict(variant="lf", split=3, fastv_k=2, fastv_ratio=0.5), "padded"),
}


class CountingBackend:
    """A torch.compile backend that runs the captured graphs eagerly and counts their calls."""

    def __init__(self):
        self.graphs, self.calls = 0, 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1

        def run(*args):
            self.calls += 1
            return gm.forward(*args)

        return run


def _batches(base):
    n = num_image_tokens(base)
    same = torch.tensor([sample_ids(1, n, seed=s) for s in range(2)])  # one shared image run: kv's split path
    ids, mask = pad_batch([sample_ids(1, n, seed=0), sample_ids(1, n, text=(9, 10), seed=1)])
    return {"shared": dict(input_ids=same, attention_mask=torch.ones_like(same), pixel_values=random_pixels(2, base)),
            "padded": dict(input_ids=ids, attention_mask=mask, pixel_values=random_pixels(2, base, seed=1))}


def _greedy(model, batch, new_tokens=3):
    return model.generate(**batch, max_new_tokens=new_tokens, do_sample=False, suppress_tokens=[IMAGE_TOKEN_ID],
                          output_logits=True, return_dict_in_generate=True, pad_token_id=0, eos_token_id=None)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_compiled_prefill_equals_eager_bit_for_bit_and_decode_stays_eager(name):
    torch._dynamo.reset()
    base = make_tiny_llava()
    config, label = CONFIGS[name]
    model = dpvr.get_dpvr_model(base, dpvr.DPVRConfig(**config))
    batch = _batches(base)[label]
    with torch.no_grad():
        eager_gen = _greedy(model, batch)
        backend = CountingBackend()
        model.compile_prefill(backend=backend)
        try:
            _greedy(model, batch, new_tokens=1)  # generate's prefill alone (compiles)
            before = backend.calls
            _greedy(model, batch, new_tokens=1)
            per_prefill = backend.calls - before
            compiled_gen = _greedy(model, batch)  # the same prefill, then two decode steps
        finally:
            model.compile_prefill(backend=None)
    assert backend.graphs >= 1 and per_prefill >= 1, label
    assert backend.calls - before == 2 * per_prefill, f"{label}: decode steps ran compiled graphs"
    assert torch.equal(compiled_gen.sequences, eager_gen.sequences), label
    assert all(torch.equal(a, b) for a, b in zip(compiled_gen.logits, eager_gen.logits)), label


def test_inductor_compiled_prefill_equals_eager_on_cpu():
    torch._dynamo.reset()
    base = make_tiny_llava()
    model = dpvr.get_dpvr_model(base, dpvr.DPVRConfig(**CONFIGS["kv"][0]))
    batch = _batches(base)["shared"]
    with torch.no_grad():
        eager = model(**batch, use_cache=True)
        model.compile_prefill()
        try:
            compiled = model(**batch, use_cache=True)
        finally:
            model.compile_prefill(backend=None)
    assert_close(compiled.logits, eager.logits, rtol=1e-4, atol=1e-5)
    for mine, ref in zip(compiled.cache.layers, eager.cache.layers):
        assert_close(mine.keys, ref.keys, rtol=1e-4, atol=1e-5)
        assert_close(mine.values, ref.values, rtol=1e-4, atol=1e-5)
