"""InternVL 3: an InternViT tower, pixel shuffle and an MLP projector feeding a Qwen2 or Llama decoder.

Each image is many 256-token tiles (plus a thumbnail) wrapped in ``<img>``/``</img>`` text tokens;
only the ``<IMG_CONTEXT>`` placeholders are visual. The family's own forward merges the tile
features at those positions and its language model takes 1-D positions, so the base adapter is all
it needs.
"""

from __future__ import annotations

from dpvr.backbones.base import BackboneAdapter
from dpvr.backbones.registry import register


@register
class InternVLAdapter(BackboneAdapter):
    model_types = ("internvl",)
    family = "InternVL"

    @classmethod
    def visual_runs(cls, config, visual, processor: dict) -> tuple[list[tuple[str, int]], int]:
        """256 tokens per 448-px tile (up to ``max_patches`` tiles + a thumbnail) inside ``<img>…</img>``."""
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

        vc = config.vision_config
        size = vc.image_size[0] if isinstance(vc.image_size, (list, tuple)) else vc.image_size
        patch = vc.patch_size[0] if isinstance(vc.patch_size, (list, tuple)) else vc.patch_size
        per_tile = int((size // patch) ** 2 * config.downsample_ratio**2)
        max_patches = processor.get("image", {}).get("max_patches", 12)
        cols, rows = get_optimal_tiled_canvas((visual.height, visual.width), (size, size), 1, max_patches)
        tiles = 1 + (cols * rows if cols * rows > 1 else 0)
        return [("text", 1), ("image", tiles * per_tile), ("text", 1)], tiles
