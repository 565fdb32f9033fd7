"""LLaVA-1.5, LLaVA-NeXT and LLaVA-OneVision: a vision tower + projector feeding a 1-D RoPE decoder.

The base adapter already does everything these families need in the engine: their own forward merges
the image (and, for OneVision, video) features at the placeholder positions (AnyRes tiles and
``image_newline`` included), and their language models take 1-D positions. What differs is how many
placeholders an image becomes (`visual_runs`): LLaVA-1.5 the tower's fixed grid (the base rule),
NeXT and OneVision the AnyRes count of their processors.
"""

from __future__ import annotations

import math

from dpvr.backbones.base import BackboneAdapter
from dpvr.backbones.registry import register


def anyres_tokens(config, height: int, width: int, max_num_patches: int | None) -> tuple[int, int]:
    """LLaVA-NeXT / OneVision processors' count of one image's tokens (base view + the best pinpoint's tiles,
    unpadded, + one newline per row; OneVision's ``anyres_max_N`` downscales), and the crops the tower encodes."""
    from transformers.image_processing_utils import select_best_resolution

    vc = config.vision_config
    side = vc.image_size // vc.patch_size
    best_h, best_w = select_best_resolution([height, width], config.image_grid_pinpoints)
    scale_h, scale_w = best_h // vc.image_size, best_w // vc.image_size
    cur_h, cur_w = side * scale_h, side * scale_w
    if width / height > cur_w / cur_h:
        new_h = int(round(height * (cur_w / width), 7))
        cur_h -= (cur_h - new_h) // 2 * 2
    else:
        new_w = int(round(width * (cur_h / height), 7))
        cur_w -= (cur_w - new_w) // 2 * 2
    unpadded, newlines = cur_h * cur_w, cur_h
    if max_num_patches is not None:
        ratio = math.sqrt(cur_h * cur_w / (max_num_patches * side**2))
        if ratio > 1.1:
            unpadded, newlines = int(cur_h // ratio) * int(cur_w // ratio), int(cur_h // ratio)
    base = side * side + (1 if config.vision_feature_select_strategy == "full" and config.model_type == "llava_next"
                          else 0)
    return unpadded + newlines + base, 1 + scale_h * scale_w


@register
class LlavaAdapter(BackboneAdapter):
    model_types = ("llava",)
    family = "LLaVA-1.5"


@register
class LlavaNextAdapter(BackboneAdapter):
    model_types = ("llava_next",)
    family = "LLaVA-NeXT"

    @classmethod
    def visual_runs(cls, config, visual, processor: dict) -> tuple[list[tuple[str, int]], int]:
        n, crops = anyres_tokens(config, visual.height, visual.width, None)
        return [("image", n)], crops


@register
class LlavaOnevisionAdapter(BackboneAdapter):
    model_types = ("llava_onevision",)
    family = "LLaVA-OneVision"
    visual_token_attrs = {"image": "image_token_id", "video": "video_token_id"}

    @classmethod
    def visual_runs(cls, config, visual, processor: dict) -> tuple[list[tuple[str, int]], int]:
        """Images: AnyRes with ``anyres_max_9`` downscaling; a video: each frame pooled to ⌈side/2⌉² tokens, + 1."""
        if visual.kind == "video":
            side = math.ceil(config.vision_config.image_size // config.vision_config.patch_size / 2)
            return [("video", visual.frames * side * side + 1)], visual.frames
        n, crops = anyres_tokens(config, visual.height, visual.width,
                                 int(config.vision_aspect_ratio.removeprefix("anyres_max_")))
        return [("image", n)], crops
