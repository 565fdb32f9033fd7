"""The engine's equivalence suite over every supported family (tiny random models, CPU, offline).

For each family of `tests/families.py`: vanilla and split = N equal the unwrapped model bit for bit;
cached greedy decode equals a no-cache recompute for every method; a padded batch whose samples
have different numbers of visual tokens (two image sizes, an image and a video, text-only) equals
per-sample runs; the side branch at init reproduces vanilla layer s at the visual positions;
gradient facts; adapter round trip and refusal across families; sdpa == eager. Qwen2-VL: the
text-only view's rotary positions equal the unrouted model's at prefill and every decode step.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import dpvr
from families import FAMILIES, LAYERS, PAD, SPLIT, IMAGE, VIDEO

NAMES = list(FAMILIES)
METHODS = {
    "lf": dict(variant="lf", split=SPLIT),
    "pc": dict(variant="pc", split=SPLIT),
    "kv": dict(variant="kv", split=SPLIT),
    "ideal": dict(variant="ideal", split=SPLIT),
    "fastv": dict(variant="fastv", fastv_k=SPLIT - 1 if SPLIT > 2 else 2),
    "vtw": dict(variant="vtw", split=SPLIT + 1),
    "lf+fastv": dict(variant="lf", split=SPLIT + 1, fastv_k=SPLIT),
}


def _wrap(base, **cfg):
    return dpvr.get_dpvr_model(base, dpvr.DPVRConfig(**cfg))


_CACHE: dict = {}


def _setup(name, attn="sdpa"):
    """(family, base model, samples) — built once per family and attention implementation."""
    key = (name, attn)
    if key not in _CACHE:
        fam = FAMILIES[name]
        base = fam.make(attn=attn)
        _CACHE[key] = (fam, base, fam.samples(base))
    return _CACHE[key]


def _no_visual(generate_kwargs):
    return dict(generate_kwargs, suppress_tokens=[IMAGE, VIDEO], pad_token_id=PAD, eos_token_id=None, do_sample=False)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_vanilla_and_split_n_equal_unwrapped_exactly(name, attn):
    fam, base, samples = _setup(name, attn)
    batch = fam.collate(samples, "left")
    with torch.no_grad():
        ref = base(**batch).logits
        assert torch.equal(_wrap(base, variant="vanilla")(**batch).logits, ref)
        for variant in ("lf", "pc", "kv"):
            assert torch.equal(_wrap(base, variant=variant, split=LAYERS)(**batch).logits, ref), variant


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("method", list(METHODS))
def test_cached_decode_equals_recompute(name, method):
    fam, base, samples = _setup(name)
    model = _wrap(base, **METHODS[method])
    batch = fam.collate(samples, "left")
    kw = _no_visual(dict(batch, max_new_tokens=4, output_logits=True, return_dict_in_generate=True))
    with torch.no_grad():
        cached = model.generate(**kw, use_cache=True)
        recompute = model.generate(**kw, use_cache=False)
    assert torch.equal(cached.sequences, recompute.sequences)
    assert_close(torch.stack(cached.logits), torch.stack(recompute.logits), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("method", ["vanilla", "lf", "kv", "fastv", "lf+fastv"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_mixed_batch_equals_per_sample(name, method, side):
    fam, base, samples = _setup(name)
    model = _wrap(base, **({"variant": "vanilla"} if method == "vanilla" else METHODS[method]))
    batch = fam.collate(samples, side)
    with torch.no_grad():
        logits = model(**batch).logits  # (B, L, V)
        for i, sample in enumerate(samples):
            alone = model(**fam.collate([sample], side)).logits[0]  # (Li, V)
            real = batch["attention_mask"][i].bool()
            assert_close(logits[i, real], alone, rtol=1e-4, atol=1e-5, msg=lambda m: f"sample {i}: {m}")


@pytest.mark.parametrize("name", NAMES)
def test_side_branch_at_init_reproduces_vanilla_layer_s(name):
    fam, base, samples = _setup(name)
    batch = fam.collate(samples[:2], "left")
    model = _wrap(base, variant="lf", split=SPLIT)
    visual = model.backbone.visual_mask(batch["input_ids"])
    assert visual.sum(1).tolist()[0] != visual.sum(1).tolist()[1] or fam.has_video  # visual counts differ
    seen = {}
    h1 = model.backbone.layers[SPLIT].register_forward_hook(lambda m, a, o: seen.__setitem__("vanilla", o))
    with torch.no_grad():
        base(**batch)
    h1.remove()
    h2 = model.side_branch.layers[0].register_forward_hook(lambda m, a, o: seen.__setitem__("side", o))
    with torch.no_grad():
        model(**batch)
    h2.remove()
    p = seen["side"].shape[1]
    assert_close(seen["side"][visual[:, :p]], seen["vanilla"][:, :p][visual[:, :p]], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_gradient_facts_and_train_step(name):
    fam, base, samples = _setup(name)
    batch = fam.collate(samples, "right")
    # LLaVA-style labels: only the last 2 tokens of each sample (the "answer", text after the last visual token)
    labels = torch.full_like(batch["input_ids"], -100)
    for i, n in enumerate(batch["attention_mask"].sum(1).tolist()):
        labels[i, n - 2:n] = batch["input_ids"][i, n - 2:n]
    for variant, nonzero in (("lf", True), ("ideal", False)):
        model = _wrap(base, variant=variant, split=SPLIT).train()
        loss = model(**batch, labels=labels).loss
        loss.backward()
        grads = [p.grad for p in model.side_branch.parameters()]
        total = sum(float(g.abs().sum()) for g in grads if g is not None)
        assert (total > 0) == nonzero, (variant, total)
        assert all(p.grad is None for p in base.parameters())
    model = _wrap(base, variant="lf", split=SPLIT).train()  # one optimiser step changes the loss
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    first = model(**batch, labels=labels)
    first.loss.backward()
    opt.step()
    with torch.no_grad():
        assert float(model(**batch, labels=labels).loss) != float(first.loss)


@pytest.mark.parametrize("name", NAMES)
def test_adapter_round_trip_and_refused_on_another_family(name, tmp_path):
    fam, base, samples = _setup(name)
    batch = fam.collate(samples, "left")
    model = _wrap(base, variant="lf", split=SPLIT)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.side_branch.parameters():
            p.add_(0.01 * torch.randn_like(p))
        ref = model(**batch).logits
    model.save_pretrained(tmp_path / "adapter")
    loaded = dpvr.DPVRModel.from_pretrained(base, tmp_path / "adapter")
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, ref)
    other = NAMES[(NAMES.index(name) + 1) % len(NAMES)]
    with pytest.raises(ValueError, match="different base|another base|fingerprint|family"):
        dpvr.DPVRModel.from_pretrained(_setup(other)[1], tmp_path / "adapter")


@pytest.mark.parametrize("name", NAMES)
def test_sdpa_equals_eager_routed(name):
    fam, base_s, samples = _setup(name, "sdpa")
    _, base_e, _ = _setup(name, "eager")
    base_e.load_state_dict(base_s.state_dict())
    batch = fam.collate(samples, "left")
    for method in ("lf", "kv", "fastv"):
        with torch.no_grad():
            a = _wrap(base_s, **METHODS[method])(**batch).logits
            b = _wrap(base_e, **METHODS[method])(**batch).logits
        real = batch["attention_mask"].bool()
        assert_close(a[real], b[real], rtol=1e-4, atol=1e-5, msg=lambda m: f"{method}: {m}")


@pytest.mark.parametrize("name", [n for n in NAMES if n.startswith("qwen")])
def test_text_view_positions_equal_unrouted_positions(name):
    """M-RoPE: a text-only layer sees, at each text token, the rotary (cos, sin) the unrouted model uses there."""
    fam, base, samples = _setup(name)
    batch = fam.collate(samples, "left")
    layer = LAYERS - 2  # a text-mode layer of lf at SPLIT with K=1

    def record(store):
        def hook(module, args, kwargs):
            store.append(tuple(t.clone() for t in kwargs["position_embeddings"]))
        return base.model.language_model.layers[layer].register_forward_pre_hook(hook, with_kwargs=True)

    kw = _no_visual(dict(batch, max_new_tokens=3))
    vanilla, routed = [], []
    h = record(vanilla)
    with torch.no_grad():
        ref = base.generate(**kw)
    h.remove()
    model = _wrap(base, variant="lf", split=SPLIT)
    assert model.plan.modes[layer] == "text"
    h = record(routed)
    with torch.no_grad():
        out = model.generate(**kw)
    h.remove()
    assert len(routed) == len(vanilla) == 3  # prefill + 2 decode steps
    text = ~model.backbone.visual_mask(batch["input_ids"])  # (B, L): the text view holds padding slots too
    for b in range(text.shape[0]):
        n = int(text[b].sum())
        for t in range(2):  # cos, sin at prefill: text view slots (in order) vs the unrouted text positions
            assert torch.equal(routed[0][t][b, :n], vanilla[0][t][b][text[b]])
    for step in range(1, 3):  # decode: the same rotary at the new token
        for t in range(2):
            assert torch.equal(routed[step][t], vanilla[step][t])
    assert out.shape == ref.shape


def test_unsupported_family_and_split_ranges():
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(TypeError, match=r"model type 'llama'.*supported: .*llava.*qwen2_5_vl.*qwen3_vl"):
        _wrap(llama, variant="lf", split=1)
    _, qwen3, _ = _setup("qwen3_vl")
    with pytest.raises(ValueError, match=r"split=1 lies in layers 0\.\.1, where Qwen3-VL adds visual features.*2\.\.5"):
        _wrap(qwen3, variant="lf", split=1)
    with pytest.raises(ValueError, match=r"split=9 is outside 1\.\.5"):
        _wrap(_setup("qwen2_vl")[1], variant="lf", split=9)


@pytest.mark.parametrize("name", [n for n in NAMES if FAMILIES[n].has_video])
def test_route_only_images_or_videos(name):
    fam, base, samples = _setup(name)
    batch = fam.collate(samples, "left")
    ids = batch["input_ids"]
    for route, kept_id in (("image", IMAGE), ("video", VIDEO)):
        model = _wrap(base, variant="lf", split=SPLIT, route=route)
        assert torch.equal(model.backbone.visual_mask(ids), ids == kept_id)
        with torch.no_grad():
            model(**batch)


@pytest.mark.parametrize("name", NAMES)
def test_benchmark_prompts_carry_the_tokens_the_layout_counts(name):
    """The bench's random prompts (`dpvr.efficiency.inputs`) and the FLOPs model's layout count visual tokens with
    the same adapter rule, and the family's own forward consumes exactly that many (a mismatch raises inside it)."""
    from dpvr.backbones import adapter_for
    from dpvr.efficiency.inputs import model_inputs
    from dpvr.shapes.layout import Visual, prompt_layout

    fam, base, _ = _setup(name)
    adapter = adapter_for(base)
    visuals = [[Visual("image", 40, 72)]] + ([[Visual("video", 24, 40, frames=3)]] if fam.has_video else [])
    for vis in visuals:
        layout = prompt_layout(base.config, visuals=vis, system_tokens=5)
        batch = model_inputs(base.config, layout, batch=2, text_tokens=7)
        with torch.no_grad():
            ref = base(**batch).logits
            out = _wrap(base, variant="lf", split=SPLIT)(**batch).logits
        assert ref.shape == out.shape
        assert adapter.visual_mask(batch["input_ids"]).sum(1).tolist() == [layout.visual_tokens] * 2
