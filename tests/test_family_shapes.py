"""Bundled shapes of every family: configs, parameter totals, visual-token rules, and the FLOPs model
checked against torch's own FLOP counter and the masks HF builds, on scaled-down copies."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import CONFIG_MAPPING, AttentionInterface, AttentionMaskInterface, AutoModel
from transformers.masking_utils import eager_mask

from dpvr.config import DPVRConfig
from dpvr.efficiency.flops import ShapeDims, attention_pairs, compare, lm_head_flops, prefill_flops
from dpvr.efficiency.methods import LayerWork, Method, make_methods
from dpvr.shapes import FAMILY_SHAPES, PUBLISHED, build_meta_model, default_split, load_shape_config, parameter_counts
from dpvr.shapes.layout import Visual, prompt_layout

# Parameter totals of the published checkpoints (model cards / safetensors index), counted on the meta model.
PUBLISHED_TOTALS = {
    "llava-1.5-7b": 7_063_427_072,
    "llava-1.5-13b": 13_351_494_656,
    "llava-v1.6-mistral-7b": 7_566_747_648,
    "llava-onevision-qwen2-7b": 8_030_807_584,
    "qwen2.5-vl-7b": 8_292_166_656,
    "qwen3-vl-8b": 8_767_123_696,
    "gemma-3-4b": 4_300_079_472,
    "internvl3-8b": 7_944_373_760,
    "smolvlm-2.2b": 2_246_784_880,
    "mistral-small-3.1-24b": 24_011_361_280,
}

# (shape, layout) -> visual tokens of the default input, from each family's processor rule.
VISUAL_TOKENS = {
    ("llava-1.5-7b", "image"): 576,
    ("llava-v1.6-mistral-7b", "image"): 2928,  # 672x672: 576 base + 48 rows of (48 + newline)
    ("llava-onevision-qwen2-7b", "image"): 5967,  # 1280x720 -> 768x1536 pinpoint, unpadded 54x96 + 54 + 729
    ("llava-onevision-qwen2-7b", "video"): 3137,  # 16 frames x 14x14 pooled + 1 newline
    ("qwen2.5-vl-7b", "image"): 1196,  # 1280x720 -> 1288x728 -> 92x52 patches / 4
    ("qwen2.5-vl-7b", "video"): 5760,  # 8 temporal groups x (1008x560 -> 72x40 / 4)
    ("qwen3-vl-8b", "image"): 880,  # 1280x704 -> 80x44 patches of 16 / 4
    ("qwen3-vl-8b", "video"): 7040,  # 8 groups x 880
    ("gemma-3-4b", "image"): 256,
    ("internvl3-8b", "image"): 2304,  # 4x2 tiles + thumbnail, 256 each
    ("smolvlm-2.2b", "image"): 1053,  # 4x3 tiles + global, 81 each
    ("mistral-small-3.1-24b", "image"): 1196,  # 46 x 26 tokens of 28 px, rows ended by [IMG_BREAK]/[IMG_END]
}


@pytest.mark.parametrize("name", PUBLISHED)
def test_shape_loads_into_its_config_class_and_builds_on_meta(name):
    cfg = load_shape_config(name)
    assert type(cfg) is CONFIG_MAPPING[cfg.model_type]
    model = build_meta_model(cfg)
    assert all(p.device.type == "meta" for p in model.parameters())
    counts = parameter_counts(cfg, DPVRConfig(variant="lf", split=default_split(cfg)))
    assert counts["total"] == PUBLISHED_TOTALS[name]
    assert counts["language_model"] + counts["vision"] == counts["total"]
    assert counts["side_branch"] == counts["decoder_layer"] > 0
    assert 1 <= default_split(cfg) < cfg.get_text_config().num_hidden_layers


def test_gemma_head_is_tied_and_qwen3_split_is_after_deepstack():
    assert parameter_counts(load_shape_config("gemma-3-4b"))["lm_head_tied"] == 1
    assert parameter_counts(load_shape_config("qwen2.5-vl-7b"))["lm_head_tied"] == 0
    qwen3 = load_shape_config("qwen3-vl-8b")
    assert default_split(qwen3) > len(qwen3.vision_config.deepstack_visual_indexes)


@pytest.mark.parametrize(("name", "which"), sorted(VISUAL_TOKENS))
def test_visual_tokens_of_every_layout(name, which):
    layout = prompt_layout(load_shape_config(name), which)
    assert layout.visual_tokens == VISUAL_TOKENS[(name, which)]
    mask = layout.mask(128)
    assert mask.sum() == layout.visual_tokens
    assert len(mask) == layout.system_tokens + layout.visual_tokens + layout.marker_tokens + 128


def test_rules_agree_with_the_families_own_processors():
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
    from transformers.models.llava_next.processing_llava_next import LlavaNextProcessor
    from transformers.models.llava_onevision.processing_llava_onevision import LlavaOnevisionProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    for h, w in [(720, 1280), (480, 640), (1000, 300), (336, 336)]:
        qwen = load_shape_config("qwen2.5-vl-7b")
        proc = Qwen2VLImageProcessorPil(size={"shortest_edge": 3136, "longest_edge": 12845056})
        ours = prompt_layout(qwen, visuals=[Visual("image", h, w)]).visual_tokens
        assert ours == proc.get_number_of_image_patches(h, w, {}) // 4
        internvl = load_shape_config("internvl3-8b")
        tiles = GotOcr2ImageProcessorPil(crop_to_patches=True, max_patches=12, size={"height": 448, "width": 448})
        assert prompt_layout(internvl, visuals=[Visual("image", h, w)]).visual_tokens == \
            256 * tiles.get_number_of_image_patches(h, w, {})
        nxt = load_shape_config("llava-v1.6-mistral-7b")
        fake = SimpleNamespace(image_processor=SimpleNamespace(image_grid_pinpoints=nxt.image_grid_pinpoints),
                               patch_size=14, num_additional_image_tokens=1)
        fake._get_unpadded_features = lambda *a: LlavaNextProcessor._get_unpadded_features(fake, *a)
        expected = LlavaNextProcessor._get_number_of_features(fake, h, w, 336, 336) - 1  # "default": CLS dropped
        assert prompt_layout(nxt, visuals=[Visual("image", h, w)]).visual_tokens == expected
        ov = load_shape_config("llava-onevision-qwen2-7b")
        fake = SimpleNamespace(image_processor=SimpleNamespace(image_grid_pinpoints=ov.image_grid_pinpoints),
                               num_image_tokens=729, vision_aspect_ratio="anyres_max_9")
        fake._get_unpadded_features = lambda *a: LlavaOnevisionProcessor._get_unpadded_features(fake, *a)
        expected = LlavaOnevisionProcessor._get_number_of_features(fake, h, w, 384, 384)
        assert prompt_layout(ov, visuals=[Visual("image", h, w)]).visual_tokens == expected


def test_unsupported_inputs_are_refused_with_one_line():
    with pytest.raises(ValueError, match="takes no video"):
        prompt_layout(load_shape_config("gemma-3-4b"), visuals=[Visual("video", 64, 64, 4)])
    with pytest.raises(ValueError, match="no 'video' layout"):
        prompt_layout(load_shape_config("internvl3-8b"), "video")


# ---------------------------------------------------------------------------------------- scaled-down LMs
def scaled(name: str):
    """The shape's config with its language model scaled down (same family, same GQA ratio, same
    layer-type pattern; Gemma 3 keeps a sliding layer pair and a full one with a window of 5)."""
    cfg = copy.deepcopy(load_shape_config(name))
    t = cfg.get_text_config()
    ratio = t.num_attention_heads // t.num_key_value_heads
    t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.vocab_size = 64, 96, 3, 128
    t.pad_token_id = None
    t.num_attention_heads, t.num_key_value_heads, t.head_dim = 4, 4 // min(ratio, 4), 16
    rope = getattr(t, "rope_parameters", None)
    if isinstance(rope, dict) and "mrope_section" in rope:
        rope["mrope_section"] = [4, 2, 2] if cfg.model_type == "qwen3_vl" else [2, 3, 3]
    if getattr(t, "layer_types", None):
        t.layer_types = ["sliding_attention", "sliding_attention", "full_attention"] \
            if "sliding_attention" in t.layer_types else ["full_attention"] * 3
    if getattr(t, "sliding_window", None):
        t.sliding_window = 5
    return cfg


_masks: dict[int, int] = {}


def _counting_attention(module, q, k, v, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager attention (plain matmuls, which the FLOP counter sees; CPU sdpa kernels it does not) that
    records how many query-key pairs the mask HF built for this layer allows."""
    _masks[module.layer_idx] = int((attention_mask == 0).sum())
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = torch.matmul(q, k.transpose(2, 3)) * (q.shape[-1] ** -0.5 if scaling is None else scaling)
    probs = torch.softmax(scores + attention_mask, dim=-1)
    return torch.matmul(probs, v).transpose(1, 2).contiguous(), probs


AttentionInterface.register("dpvr_count", _counting_attention)
AttentionMaskInterface.register("dpvr_count", eager_mask)


@pytest.mark.parametrize("name", PUBLISHED)
def test_lm_flops_equal_torch_flop_counter_and_pairs_equal_hf_masks(name):
    """Projections, MLP and lm_head: exactly torch's count (its matmuls count every query-key pair, so
    its attention term is the dense L² one); the pairs the FLOPs model counts per layer: exactly the
    allowed entries of the mask HF builds (causal; Gemma 3: sliding windows)."""
    cfg = scaled(name)
    t = cfg.get_text_config()
    dims = ShapeDims.from_config(cfg)
    torch.manual_seed(0)
    t._attn_implementation = "dpvr_count"
    lm = AutoModel.from_config(t).eval()
    head = torch.nn.Linear(t.hidden_size, t.vocab_size, bias=False)
    L = 13
    x = torch.randn(1, L, t.hidden_size)
    full = LayerWork(*(np.ones(L, dtype=bool),) * 3)
    _masks.clear()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        h = lm(inputs_embeds=x, use_cache=False).last_hidden_state
        head(h)
    causal = prefill_flops(dims, Method("vanilla", DPVRConfig(variant="vanilla")), np.zeros(L, dtype=bool),
                           vision=0)["decoder"]
    pairs = sum(attention_pairs(full, dims.window(i)) for i in range(dims.num_layers))
    dense = causal - 4 * dims.q_width * pairs + dims.num_layers * 4 * dims.q_width * L * L
    assert counter.get_total_flops() == dense + lm_head_flops(L, dims)
    assert _masks == {i: attention_pairs(full, dims.window(i)) for i in range(dims.num_layers)}
    if name == "gemma-3-4b":
        assert dims.windows == (5, 5, 0) and _masks[0] < L * (L + 1) // 2 == _masks[2]


def test_gemma_in_image_pairs_are_bidirectional_and_windowed():
    """A prompt of 3 text, a 4-token image, 3 text: full layers add the 6 later in-image pairs; a window
    of 2 cuts causal pairs but keeps the later in-image ones (HF: AND(window, OR(causal, block)))."""
    is_image = np.array([0, 0, 0, 1, 1, 1, 1, 0, 0, 0], dtype=bool)
    groups = np.where(is_image, 0, -1)
    work = LayerWork(*(np.ones(10, dtype=bool),) * 3)
    assert attention_pairs(work) == 55
    assert attention_pairs(work, groups=groups) == 55 + 6
    assert attention_pairs(work, window=2) == 1 + 9 * 2
    assert attention_pairs(work, window=2, groups=groups) == 19 + 6


@pytest.mark.parametrize("name", FAMILY_SHAPES)
def test_lf_saves_on_every_family_and_grows_with_the_visual_share(name):
    cfg = load_shape_config(name)
    layout = prompt_layout(cfg)
    dims = ShapeDims.from_config(cfg, layout)
    methods = make_methods(["lf", "lf+fastv-50"], dims.num_layers, default_split(cfg))
    rows = compare(dims, methods, [64, 512], layout=layout)
    lf = {r["text_tokens"]: r for r in rows if r["method"] == "lf"}
    both = {r["text_tokens"]: r for r in rows if r["method"] == "lf+fastv"}
    assert 0.1 < lf[512]["saving_lm"] < lf[64]["saving_lm"] < 0.5  # more visual share, more saving
    assert lf[64]["visual_share"] > lf[512]["visual_share"]
    assert both[64]["saving_lm"] > lf[64]["saving_lm"]
    assert 0 < lf[64]["saving_whole"] < lf[64]["saving_lm"]  # the vision side is the same for every method


@pytest.mark.parametrize("name", PUBLISHED)
def test_latency_model_builder_is_family_generic(name):
    from dpvr.efficiency.latency import build_random_model

    cfg = load_shape_config(name)
    model = build_random_model(cfg, torch.bfloat16, "meta")
    assert type(model).__name__ == cfg.architectures[0]
    assert next(model.parameters()).dtype == torch.bfloat16
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_TOTALS[name]


def test_prompt_ids_follow_the_layout():
    from dpvr.efficiency.inputs import token_ids
    from dpvr.efficiency.latency import make_inputs

    cfg = load_shape_config("qwen3-vl-8b")
    layout = prompt_layout(cfg, "video")
    ids = token_ids(cfg, layout, 2, 5, torch.Generator().manual_seed(0))
    assert ids.shape == (2, len(layout.mask(5)))
    assert int((ids == cfg.video_token_id).sum()) == 2 * 7040 and not (ids == cfg.image_token_id).any()
    assert int((ids[0] == cfg.vision_start_token_id).sum()) == int((ids[0] == cfg.vision_end_token_id).sum()) == 8
    tiny = make_inputs(load_shape_config("tiny"), 2, 3, 4, 2, torch.float32, torch.device("cpu"))
    assert int((tiny["input_ids"] == 500).sum()) == 2 * 16 and tiny["pixel_values"].shape == (2, 3, 32, 32)
    assert tiny["input_ids"].shape == (2, 3 + 16 + 4) and tiny["decode_tokens"].shape == (2, 2)
