"""The side branch: D decoder layers of the backbone's own class that carry the image states.

Layer j starts as a copy of backbone layer ``s + j`` (``side_init="copy"``), so at
initialisation with D = 1 its output at the image positions equals what vanilla layer ``s``
computes there. It runs causally over the prefix of the sequence that ends with the last image
token (system prompt, image tokens, text between images), at the original positions, once per
prefill; its output at the image positions is what ``fuse`` and ``kv`` layers read.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class SideBranch(nn.Module):
    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    @classmethod
    def from_backbone(cls, backbone_layers: nn.ModuleList, split: int, depth: int, init: str = "copy",
                      init_fn=None) -> "SideBranch":
        layers = [copy.deepcopy(backbone_layers[split + j]) for j in range(depth)]
        if init == "random":
            if init_fn is None:
                raise ValueError("side_init='random' needs the base model's weight initialiser")
            for layer in layers:
                layer.apply(init_fn)
        for layer in layers:
            for p in layer.parameters():
                p.requires_grad_(True)
        return cls(layers)

    def forward(
        self,
        hidden: torch.Tensor,  # (B, P, d): hidden states after layer s-1, prefix up to the last image token
        attention_mask,
        position_ids: torch.Tensor,  # (B|1, P)
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        backbone=None,  # the family's adapter (knows the layer call); None: the transformers 5.24 signature
    ) -> torch.Tensor:  # (B, P, d)
        for layer in self.layers:
            if backbone is not None:
                hidden = backbone.call_layer(layer, hidden, attention_mask, position_ids, None, False, position_embeddings)
            else:
                hidden = layer(hidden, attention_mask=attention_mask, position_ids=position_ids, cache=None,
                               use_cache=False, position_embeddings=position_embeddings)
        return hidden
