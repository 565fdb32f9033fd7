"""The engine's handle on a model: its family's backbone adapter (see `dpvr.backbones`).

Kept as the engine-side name: ``backbone_of(model)`` is ``dpvr.backbones.adapter_for(model)``.
"""

from __future__ import annotations

from dpvr.backbones import BackboneAdapter as Backbone
from dpvr.backbones import adapter_for as backbone_of

__all__ = ["Backbone", "backbone_of"]
