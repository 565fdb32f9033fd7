"""Saturation analysis on tiny random LLaVA models: statistics, exact attention, batching, memory."""

from __future__ import annotations

import gc
import math

import pytest
import torch
from conftest import IMAGE_TOKEN_ID, make_tiny_llava, num_image_tokens

from dpvr.analysis import analyze_saturation
from dpvr.analysis.stats import STATS, LayerProbe, RunningStat, make_layout
from dpvr.analysis.saturate import collate


def make_samples(model, k: int, seed: int = 0, vocab: int = 64):
    """``k`` samples: BOS, a short system prompt, one image, a question and an answer (lazy)."""
    n = num_image_tokens(model)
    size = model.config.vision_config.image_size
    g = torch.Generator().manual_seed(seed)
    for _ in range(k):
        pre = torch.randint(5, vocab, (int(torch.randint(1, 5, (1,), generator=g)),), generator=g)
        post = torch.randint(5, vocab, (int(torch.randint(3, 10, (1,), generator=g)),), generator=g)
        ids = torch.cat([torch.tensor([1]), pre, torch.full((n,), IMAGE_TOKEN_ID), post])
        answer = torch.zeros_like(ids, dtype=torch.bool)
        answer[-3:-1] = True  # the last two positions predict the answer tokens
        yield {"input_ids": ids, "pixel_values": torch.randn(1, 3, size, size, generator=g), "answer_mask": answer}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def means(result, key):
    return torch.tensor([math.nan if v is None else v for v in result.statistics[key]["mean"]])


@pytest.fixture(scope="module")
def model():
    return make_tiny_llava(num_layers=6)


@pytest.fixture(scope="module")
def result(model):
    return analyze_saturation(model, make_samples(model, 8), batch_size=4, progress=False)


def test_kl_is_zero_at_last_layer_and_nonnegative(result):
    for key in ("kl_image", "kl_text"):
        kl = means(result, key)
        assert kl[-1] == 0.0
        assert (kl >= 0).all() and (kl[:-1] > 0).all()


def test_value_ranges(result):
    for key in ("cosine_image", "cosine_text"):
        c = means(result, key)
        assert torch.isfinite(c).all() and (c >= -1).all() and (c <= 1).all()
    a = means(result, "attn_text_to_image")
    assert torch.isfinite(a).all() and (a >= 0).all() and (a <= 1).all()
    per_head = torch.tensor(result.statistics["attn_per_head"]["mean"])
    assert per_head.shape == (6, 4) and (per_head >= 0).all() and (per_head <= 1).all()
    assert result.statistics["cosine_image"]["n"] == [8] * 6
    assert 0 < result.statistics["image_key_share"]["mean"] < 1


def test_suggested_split_in_deep_half(result):
    N = result.num_layers
    assert N // 2 <= result.suggested_split <= N - 2
    assert f"s={result.suggested_split}" in result.explanation
    assert set(result.transitions) == set(STATS)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_attention_mass_matches_eager_output_attentions(attn):
    """The recomputed mass (any implementation) equals eager ``output_attentions``, padding included."""
    model = make_tiny_llava(num_layers=3, attn=attn)
    reference = make_tiny_llava(num_layers=3, attn="eager")  # same seed -> same weights
    samples = list(make_samples(model, 3, seed=1))
    batch = collate(samples, pad_id=0)
    layout = make_layout(batch["input_ids"], batch["attention_mask"], IMAGE_TOKEN_ID, batch["answer_mask"])
    assert batch["attention_mask"].min() == 0  # the batch is padded
    with torch.no_grad(), LayerProbe(model) as probe:
        probe.layout = layout
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
              pixel_values=batch["pixel_values"])
        values = probe.collect()
        out = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        pixel_values=batch["pixel_values"], output_attentions=True)
    for layer, att in enumerate(out.attentions):  # (B, H, L, L)
        for b, q in enumerate(layout.queries):
            share = att[b][:, q][..., layout.image[b]].sum(-1)  # (H, Tq)
            torch.testing.assert_close(values["attn_text_to_image"][b, layer], share.mean().double(),
                                       atol=1e-6, rtol=0)
            torch.testing.assert_close(values["attn_per_head"][b, layer], share.mean(-1).double(),
                                       atol=1e-6, rtol=0)


def test_attention_in_query_chunks_is_exact(model):
    """Long sequences are processed in query chunks (bounded memory) with the same result."""
    batch = collate(list(make_samples(model, 3, seed=3)), pad_id=0)
    layout = make_layout(batch["input_ids"], batch["attention_mask"], IMAGE_TOKEN_ID, batch["answer_mask"])
    per_head = []
    for limit in (2 ** 26, 1):  # one chunk / one query at a time
        with torch.no_grad(), LayerProbe(model, cosine=False, lens=False, max_scores_elements=limit) as probe:
            probe.layout = layout
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  pixel_values=batch["pixel_values"])
            per_head.append(probe.collect()["attn_per_head"])
    torch.testing.assert_close(per_head[0], per_head[1], atol=1e-7, rtol=0)


def test_lens_positions_are_capped():
    ids = torch.tensor([[1, 5] + [IMAGE_TOKEN_ID] * 10 + [6, 7, 8, 9, 10, 11]])
    answer = torch.zeros_like(ids, dtype=torch.bool)
    answer[0, 12:17] = True
    lay = make_layout(ids, torch.ones_like(ids), IMAGE_TOKEN_ID, answer, lens_positions=3)
    assert lay.lens_image.sum() == 3 and lay.lens_text.sum() == 3
    assert lay.lens_index[0, :3].tolist() == [2, 6, 11] and lay.lens_index[0, 3:].tolist() == [12, 14, 16]
    assert lay.queries[0].tolist() == [12, 13, 14, 15, 16, 17]


def test_batch_1_equals_batch_4(model):
    one = analyze_saturation(model, make_samples(model, 8, seed=2), batch_size=1, progress=False)
    four = analyze_saturation(model, make_samples(model, 8, seed=2), batch_size=4, progress=False)
    for key in STATS:
        for field in ("mean", "std"):
            torch.testing.assert_close(torch.tensor(one.statistics[key][field], dtype=torch.float64),
                                       torch.tensor(four.statistics[key][field], dtype=torch.float64),
                                       atol=2e-5, rtol=1e-4)
        assert one.statistics[key]["n"] == four.statistics[key]["n"]
    assert one.suggested_split == four.suggested_split


def _proc_status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (peak resident memory) to the current RSS
        return True
    except OSError:
        return False


def test_memory_is_bounded():
    """Statistics over 200 samples use no more memory than over 20: nothing is kept per sample.

    Measured as the process's peak resident memory (VmHWM, reset before each run). Keeping the
    hidden states of every sample would add ~40 MB for 200 samples of this model; attention
    maps ~30 MB more.
    """
    if not _reset_peak_rss():
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak RSS")
    model = make_tiny_llava(num_layers=4, hidden=128, heads=4, kv_heads=2, image_size=32, patch=4)

    def run(k):
        gc.collect()
        _reset_peak_rss()
        base = _proc_status("VmRSS")
        r = analyze_saturation(model, make_samples(model, k), batch_size=16, progress=False)
        return r, _proc_status("VmHWM") - base

    run(16)  # warm up allocator, lazy imports and caches
    small, peak_small = run(20)
    large, peak_large = run(200)
    assert large.samples["used"] == 200 and small.samples["used"] == 20
    assert peak_large <= max(peak_small, 0) + 16e6, (peak_small, peak_large)


def test_running_stat_matches_direct_computation():
    x = torch.randn(10, 3, dtype=torch.float64)
    x[2, 1] = math.nan
    rs = RunningStat((3,))
    rs.update(x[:4])
    rs.update(x[4:])
    for j in range(3):
        col = x[:, j][~torch.isnan(x[:, j])]
        assert rs.count[j] == col.numel()
        torch.testing.assert_close(rs.mean()[j], col.mean())
        torch.testing.assert_close(rs.std()[j], col.std())


def test_samples_without_images_are_skipped_and_zero_usable_is_an_error(model):
    text_only = {"input_ids": torch.tensor([1, 5, 6, 7]), "pixel_values": None}
    samples = [text_only] + list(make_samples(model, 2))
    r = analyze_saturation(model, samples, batch_size=2, progress=False)
    assert r.samples["used"] == 2 and r.samples["skipped_no_image_tokens"] == 1
    with pytest.raises(ValueError, match="no usable samples"):
        analyze_saturation(model, [text_only], progress=False)


def test_not_llava_style_model_is_refused():
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(ValueError, match="no backbone adapter for model type 'llama'"):
        analyze_saturation(llama, [], progress=False)
