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
