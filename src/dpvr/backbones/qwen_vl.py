"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: M-RoPE positions, dynamic resolution, video.

Positions are 3-D (temporal, height, width) for the rotary embedding; the family's own forward
computes them with ``get_rope_index`` at prefill (and stores ``rope_deltas`` for decode), and
``generate`` passes 4 rows whose first is the 1-D text position the masks and layers use. The text
model's rules for turning ``position_ids`` into those rows live in `positions`, as in
``Qwen2VLTextModel.forward``. Qwen3-VL adds deepstack: visual features from several vision layers
are added into the hidden states after the first LM layers, so a split must come after them.
"""

from __future__ import annotations

import torch

from dpvr.backbones.base import BackboneAdapter, Positions, random_prompt
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


    @classmethod
    def synthetic_batch(cls, config, batch: int, system_tokens: int, text_tokens: int, image_hw=None,
                        generator: torch.Generator | None = None) -> dict:
        """One image of ``image_hw`` pixels (default 1280x720 landscape: (720, 1280)) resized as the family's
        processor does (sides multiples of patch x merge, within its pixel budget), then 2x2-merged patches."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        vision = config.vision_config
        patch, merge, tp = vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size
        h, w = image_hw or (720, 1280)
        h, w = smart_resize(h, w, factor=patch * merge, min_pixels=56 * 56, max_pixels=14 * 14 * 4 * 1280)
        grid = torch.tensor([[1, h // patch, w // patch]])
        n_image = int(grid.prod()) // merge ** 2
        ids = random_prompt(config.get_text_config().vocab_size, system_tokens,
                             [config.vision_start_token_id] + [config.image_token_id] * n_image + [config.vision_end_token_id],
                             text_tokens, cls._reserved_ids(config), generator)
        rows = torch.randn(batch * int(grid.prod()), vision.in_channels * tp * patch * patch, generator=generator)
        ids = ids.expand(batch, -1).clone()
        return {"input_ids": ids, "pixel_values": rows, "image_grid_thw": grid.repeat(batch, 1),
                "mm_token_type_ids": (ids == config.image_token_id).int()}


@register
class Qwen3VLAdapter(Qwen2VLAdapter):
    model_types = ("qwen3_vl",)
    family = "Qwen3-VL"
    rope_rows = 4

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
