"""Mistral 3 (Mistral Small 3.1 and its Pixtral tower): variable image sizes, a Mistral decoder.

An image of h×w pixels gives (h/16)·(w/16) placeholders laid out row by row, each row followed by an
``[IMG_BREAK]`` text token and the last by ``[IMG_END]``: the image span holds text tokens, which the
engine keeps in the text view like any other. The family's own forward runs the Pixtral tower on the
padded images (``image_sizes`` says where each one ends) and merges the patch-merged features; its
language model takes 1-D positions, so the base adapter is all it needs.
"""

from __future__ import annotations

from dpvr.backbones.base import BackboneAdapter
from dpvr.backbones.registry import register


@register
class Mistral3Adapter(BackboneAdapter):
    model_types = ("mistral3",)
    family = "Mistral 3"
