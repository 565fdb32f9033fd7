"""Scaled-down copies of every bundled family run a real forward on the inputs dpvr builds from a
prompt layout (so the layout's visual-token counts are the ones the model consumes), and the analytic
vision FLOPs equal torch's FlopCounterMode on the vision side."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForImageTextToText

from dpvr.efficiency.inputs import model_inputs
from dpvr.efficiency.vision import vision_flops
from dpvr.shapes import FAMILY_SHAPES, load_shape_config
from dpvr.shapes.layout import prompt_layout

TINY_VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2)


def tiny_family(name: str):
    """The shape's config scaled down: a 2-layer text model of hidden 64 (vocab 512, special ids moved
    inside it), a 2-layer vision tower of hidden 32 with small images, and matching layouts."""
    cfg = copy.deepcopy(load_shape_config(name))
    t = cfg.get_text_config()
    ratio = t.num_attention_heads // t.num_key_value_heads
    t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.vocab_size = 64, 96, 3, 512
    t.num_attention_heads, t.num_key_value_heads, t.head_dim = 4, 4 // min(ratio, 4), 16
    t.pad_token_id = t.bos_token_id = t.eos_token_id = None
    if getattr(t, "layer_types", None):
        t.layer_types = ["sliding_attention", "sliding_attention", "full_attention"] \
            if "sliding_attention" in t.layer_types else ["full_attention"] * 3
    if getattr(t, "sliding_window", None):
        t.sliding_window = 8
    rope = getattr(t, "rope_parameters", None)
    if isinstance(rope, dict) and "mrope_section" in rope:
        rope["mrope_section"] = [4, 2, 2] if cfg.model_type == "qwen3_vl" else [2, 3, 3]
    if hasattr(cfg, "vocab_size"):
        cfg.vocab_size = 512
    for i, key in enumerate(("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id",
                             "boi_token_index", "eoi_token_index")):
        if isinstance(getattr(cfg, key, None), int):
            setattr(cfg, key, 500 + i)
    vc = cfg.vision_config
    meta = copy.deepcopy(cfg._dpvr_shape)
    family = cfg.model_type
    if family in ("llava_next", "llava_onevision"):
        for k, v in TINY_VISION.items():
            setattr(vc, k, v)
        vc.image_size, vc.patch_size = 32, 8
        cfg.image_grid_pinpoints = [[32, 64], [64, 32], [64, 64], [32, 32]]
        meta["layouts"] = {"image": [{"kind": "image", "height": 40, "width": 60}]}
        if family == "llava_onevision":
            meta["layouts"]["video"] = [{"kind": "video", "frames": 3, "height": 32, "width": 32}]
    elif family == "gemma3":
        for k, v in TINY_VISION.items():
            setattr(vc, k, v)
        vc.image_size, vc.patch_size, cfg.mm_tokens_per_image = 32, 4, 16
    elif family == "internvl":
        for k, v in TINY_VISION.items():
            setattr(vc, k, v)
        vc.image_size, vc.patch_size = [32, 32], [8, 8]
        meta["layouts"] = {"image": [{"kind": "image", "height": 40, "width": 70}]}
    elif family in ("idefics3", "smolvlm"):
        for k, v in TINY_VISION.items():
            setattr(vc, k, v)
        vc.image_size, vc.patch_size = 48, 8
        meta["processor"] = {"image": {"longest_edge": 4 * 48, "tile": 48}}
        meta["layouts"] = {"image": [{"kind": "image", "height": 60, "width": 100}]}
    elif family in ("qwen2_5_vl", "qwen3_vl"):
        vc.depth, vc.hidden_size, vc.intermediate_size, vc.num_heads = 2, 32, 48, 2
        vc.out_hidden_size, vc.patch_size = 64, 4
        if family == "qwen2_5_vl":
            vc.window_size, vc.fullatt_block_indexes = 16, [1]
        else:
            vc.num_position_embeddings, vc.deepstack_visual_indexes = 16, [0]
        limits = {"min_pixels": 64, "max_pixels": 4096}
        meta["processor"] = {"image": limits, "video": dict(limits, max_pixels=12288, timestamp_tokens=2)}
        meta["layouts"] = {"image": [{"kind": "image", "height": 40, "width": 56}],
                           "video": [{"kind": "video", "frames": 4, "height": 24, "width": 40}]}
    elif family == "mistral3":
        for k, v in TINY_VISION.items():
            setattr(vc, k, v)
        vc.head_dim, vc.image_size, vc.patch_size = 16, 64, 4
        meta["processor"] = {"image": {"longest_edge": 64}}
        meta["layouts"] = {"image": [{"kind": "image", "height": 40, "width": 70}]}
    cfg._dpvr_shape = meta
    return cfg


CASES = [(n, w) for n in FAMILY_SHAPES for w in ("image", "video")
         if w == "image" or n in ("llava-onevision-qwen2-7b", "qwen2.5-vl-7b", "qwen3-vl-8b")]


VISION_PARTS = ("vision_tower", "visual", "vision_model", "multi_modal_projector", "connector")


@pytest.mark.parametrize(("name", "which"), CASES)
def test_tiny_family_forward_and_vision_flops(name, which):
    cfg = tiny_family(name)
    cfg._attn_implementation = "eager"
    for sub in cfg.sub_configs:
        getattr(cfg, sub)._attn_implementation = "eager"
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(cfg).eval()
    layout = prompt_layout(cfg, which)
    inputs = model_inputs(cfg, layout, batch=1, text_tokens=5)
    with torch.no_grad(), FlopCounterMode(display=False, depth=None) as counter:
        out = model(**inputs, use_cache=False)
    assert out.logits.shape[1] == inputs["input_ids"].shape[1]  # the model consumed every visual token
    counts = counter.get_flop_counts()
    root = f"{type(model).__name__}.model"
    vision_parts = [f"{root}.{part}" for part in VISION_PARTS if f"{root}.{part}" in counts]
    assert vision_parts
    measured = sum(sum(counts[k].values()) for k in vision_parts)
    assert measured == vision_flops(cfg, layout) > 0


def test_bad_family_inputs_are_refused():
    cfg = load_shape_config("gemma-3-4b")
    cfg.model_type = "paligemma"
    with pytest.raises(ValueError, match="no input builder"):
        model_inputs(cfg, prompt_layout(load_shape_config("gemma-3-4b")), 1, 4)
