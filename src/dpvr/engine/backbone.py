"""Access to the parts of a stock LLaVA-style model that the routing engine drives.

Nothing here copies or patches a module: `Backbone` only holds references to the wrapped
model's own embedding, decoder layers, rotary embedding, final norm and LM head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Backbone:
    model: nn.Module  # e.g. transformers.LlavaForConditionalGeneration
    language_model: nn.Module  # decoder stack (LlamaModel, MistralModel, ...)
    layers: nn.ModuleList
    rotary_emb: nn.Module
    norm: nn.Module
    lm_head: nn.Module
    text_config: object
    image_token_id: int

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)


def backbone_of(model: nn.Module) -> Backbone:
    """Locate the pieces of a LLaVA-style ``...ForConditionalGeneration`` model, with a clear error if absent."""
    config = getattr(model, "config", None)
    image_token_id = getattr(config, "image_token_id", None)
    inner = getattr(model, "model", None)
    lm = getattr(inner, "language_model", None)
    missing = [
        name
        for name, ok in [
            ("config.image_token_id", image_token_id is not None),
            ("model.language_model", lm is not None),
            ("model.language_model.layers", lm is not None and hasattr(lm, "layers")),
            ("model.language_model.rotary_emb", lm is not None and hasattr(lm, "rotary_emb")),
            ("lm_head", hasattr(model, "lm_head")),
            ("model.get_image_features", hasattr(inner, "get_image_features")),
        ]
        if not ok
    ]
    if missing:
        raise TypeError(
            f"{type(model).__name__} is not a LLaVA-style model that dpvr can route (missing {', '.join(missing)}); "
            "load it with transformers.LlavaForConditionalGeneration (or another *ForConditionalGeneration "
            "with a decoder language model)"
        )
    return Backbone(
        model=model,
        language_model=lm,
        layers=lm.layers,
        rotary_emb=lm.rotary_emb,
        norm=lm.norm,
        lm_head=model.lm_head,
        text_config=config.get_text_config(),
        image_token_id=int(image_token_id),
    )
