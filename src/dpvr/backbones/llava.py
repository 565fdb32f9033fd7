"""LLaVA-1.5, LLaVA-NeXT and LLaVA-OneVision: a vision tower + projector feeding a 1-D RoPE decoder.

The base adapter already does everything these families need: their own forward merges the image
(and, for OneVision, video) features at the placeholder positions (AnyRes tiles and ``image_newline``
included), and their language models take 1-D positions.
"""

from __future__ import annotations

from dpvr.backbones.base import BackboneAdapter
from dpvr.backbones.registry import register


@register
class LlavaAdapter(BackboneAdapter):
    model_types = ("llava",)
    family = "LLaVA-1.5"


@register
class LlavaNextAdapter(BackboneAdapter):
    model_types = ("llava_next",)
    family = "LLaVA-NeXT"


@register
class LlavaOnevisionAdapter(BackboneAdapter):
    model_types = ("llava_onevision",)
    family = "LLaVA-OneVision"
    visual_token_attrs = {"image": "image_token_id", "video": "video_token_id"}
