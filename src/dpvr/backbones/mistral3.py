"""Mistral 3 (Mistral Small 3.1 and its Pixtral tower): variable image sizes, a Mistral decoder.

An image of h×w pixels gives (h/16)·(w/16) placeholders laid out row by row, each row followed by an
``[IMG_BREAK]`` text token and the last by ``[IMG_END]``: the image span holds text tokens, which the
engine keeps in the text view like any other. The family's own forward runs the Pixtral tower on the
padded images (``image_sizes`` says where each one ends) and merges the patch-merged features; its
language model takes 1-D positions, so the base adapter is all it needs.
"""

from __future__ import annotations

import math

from dpvr.backbones.base import BackboneAdapter
from dpvr.backbones.registry import register


@register
class Mistral3Adapter(BackboneAdapter):
    model_types = ("mistral3",)
    family = "Mistral 3"

    @classmethod
    def visual_runs(cls, config, visual, processor: dict) -> tuple[list[tuple[str, int]], int]:
        """One token per (patch × merge)² px of the image resized to fit the longest edge, row by row; the
        ``[IMG_BREAK]`` after each row and the final ``[IMG_END]`` are text."""
        step = config.vision_config.patch_size * config.spatial_merge_size
        longest = processor.get("image", {}).get("longest_edge", config.vision_config.image_size)
        h, w = visual.height, visual.width
        ratio = max(h / longest, w / longest)
        if ratio > 1:
            h, w = int(math.floor(h / ratio)), int(math.floor(w / ratio))
        rows, cols = (h - 1) // step + 1, (w - 1) // step + 1
        return [r for _ in range(rows) for r in (("image", cols), ("text", 1))], 1
