"""Idefics3 and SmolVLM: a SigLIP tower, pixel shuffle and a connector feeding a Llama decoder.

The language model is ``model.text_model`` (not ``language_model``), the projector ``connector``.
Each image is split into sub-images plus a global view, one placeholder span each, separated by
``<fake_token_around_image>``, ``<row_i_col_j>`` and ``<global-img>`` text tokens: the prefix that
ends with the last image token holds many text tokens between image spans, which the side branch
reads in place and the text view keeps. The family's own forward drops the all-zero padding
images, merges the features and calls its language model with 1-D positions.
"""

from __future__ import annotations

from dpvr.backbones.base import BackboneAdapter
from dpvr.backbones.registry import register


@register
class Idefics3Adapter(BackboneAdapter):
    model_types = ("idefics3", "smolvlm")
    family = "Idefics3 / SmolVLM"
    language_model_attr = "text_model"
    projector_path = "connector"
