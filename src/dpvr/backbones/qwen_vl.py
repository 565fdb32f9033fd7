"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: M-RoPE positions, dynamic resolution, video.

Positions are 3-D (temporal, height, width) for the rotary embedding; the family's own forward
computes them with ``get_rope_index`` at prefill (and stores ``rope_deltas`` for decode), and
``generate`` passes 4 rows whose first is the 1-D text position the masks and layers use. The text
model's rules for turning ``position_ids`` into those rows live in `positions`, as in
``Qwen2VLTextModel.forward``. Qwen3-VL adds deepstack: visual features from several vision layers
are added into the hidden states after the first LM layers, so a split must come after them.
"""

from __future__ import annotations

import math

import torch

from dpvr.backbones.base import BackboneAdapter, Positions
from dpvr.backbones.registry import register


@register
class Qwen2VLAdapter(BackboneAdapter):
    model_types = ("qwen2_vl", "qwen2_5_vl")
    family = "Qwen2-VL / Qwen2.5-VL"
    visual_token_attrs = {"image": "image_token_id", "video": "video_token_id"}
    projector_path = "visual.merger"
    rope_rows = 3  # rows the text model expands plain positions to (Qwen3-VL: 4, text row first)

    def positions(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor | None, cache) -> Positions:
        batch, q_len = inputs_embeds.shape[:2]
        if position_ids is None:
            past = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(q_len, device=inputs_embeds.device) + past
            position_ids = position_ids.view(1, 1, -1).expand(self.rope_rows, batch, -1)
        elif position_ids.ndim == 2:
            position_ids = position_ids[None, ...].expand(self.rope_rows, position_ids.shape[0], -1)
        if position_ids.ndim == 3 and position_ids.shape[0] == 4:
            text = position_ids[0]  # (B, q)
            return Positions(rope=position_ids[1:], layer=text, mask=text)
        return Positions(rope=position_ids, layer=None, mask=None)

    # ------------------------------------------------------------------ prompt layout (no weights needed)
    #: the processors' default pixel budgets (min, max) by kind, when a shape gives none.
    default_pixels = {"image": (3136, 12845056), "video": (100352, 602112)}
    #: a video's pixel budget covers all its frames, and each frame pair is its own start…end group (Qwen3-VL).
    per_frame_video = False

    @classmethod
    def visual_grid(cls, config, visual, processor: dict) -> tuple[int, int, int]:
        """(t, h, w) patch grid of one image or video, as the family's processor makes it: ``smart_resize`` to
        multiples of patch × merge within the pixel budget, ⌈frames / temporal patch⌉ temporal groups."""
        vc = config.vision_config
        patch, merge, temporal = vc.patch_size, vc.spatial_merge_size, vc.temporal_patch_size
        p = processor.get(visual.kind, {})
        lo_default, hi_default = cls.default_pixels[visual.kind]
        lo, hi = p.get("min_pixels", lo_default), p.get("max_pixels", hi_default)
        if visual.kind == "video" and cls.per_frame_video:
            h, w = smart_resize(visual.height, visual.width, patch * merge, lo, hi, visual.frames, temporal)
        else:
            h, w = smart_resize(visual.height, visual.width, patch * merge, lo, hi)
        t = 1 if visual.kind == "image" else -(-visual.frames // temporal)
        return t, h // patch, w // patch

    @classmethod
    def visual_runs(cls, config, visual, processor: dict) -> tuple[list[tuple[str, int]], int]:
        """(t·h·w)/merge² tokens between ``<|vision_start|>``/``<|vision_end|>`` (text tokens); Qwen3-VL writes a
        video as one ``<t seconds><|vision_start|>…<|vision_end|>`` group per temporal group."""
        t, gh, gw = cls.visual_grid(config, visual, processor)
        per_group = gh * gw // config.vision_config.spatial_merge_size ** 2
        if visual.kind == "video" and cls.per_frame_video:
            stamp = processor.get("video", {}).get("timestamp_tokens", 6)
            return [r for _ in range(t) for r in (("text", stamp + 1), ("video", per_group), ("text", 1))], t
        return [("text", 1), (visual.kind, t * per_group), ("text", 1)], t


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int, frames: int = 1,
                 temporal: int = 1) -> tuple[int, int]:
    """Qwen2-VL's ``smart_resize`` (``frames``/``temporal`` > 1: Qwen3-VL's video variant, whose pixel
    budget covers all frames)."""
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    t_bar = round(frames / temporal) * temporal if temporal > 1 else 1
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt(frames * height * width / max_pixels) if temporal > 1 else math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (frames * height * width)) if temporal > 1 else math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@register
class Qwen3VLAdapter(Qwen2VLAdapter):
    model_types = ("qwen3_vl",)
    family = "Qwen3-VL"
    rope_rows = 4
    default_pixels = {"image": (65536, 16777216), "video": (4096, 25165824)}
    per_frame_video = True

    def deepstack_layers(self) -> int:
        indexes = getattr(self.config.vision_config, "deepstack_visual_indexes", None) or []
        return len(indexes)

    def min_split(self) -> int:
        return max(1, self.deepstack_layers())

    def after_layer(self, layer_idx: int, hidden: torch.Tensor, extras: dict, visual: torch.Tensor) -> torch.Tensor:
        """Deepstack: add the layer's visual features at the visual positions, as ``Qwen3VLTextModel`` does."""
        feats = extras.get("deepstack_visual_embeds")
        if feats is None or layer_idx >= len(feats):
            return hidden
        return self.language_model._deepstack_process(hidden, extras["visual_pos_masks"], feats[layer_idx])
