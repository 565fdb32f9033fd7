"""Backbone adapters: one per model family, found by ``config.model_type``.

    from dpvr.backbones import adapter_for
    adapter = adapter_for(model)          # e.g. a Qwen2VLAdapter bound to a Qwen2VLForConditionalGeneration
    adapter.layers, adapter.visual_token_ids, adapter.lm_inputs(...), adapter.positions(...)

Adding a family: one module here with a `BackboneAdapter` subclass decorated with `register`,
one import below, one parameter in ``tests/families.py``.
"""

from dpvr.backbones.base import BackboneAdapter, LMInputs, Positions, UnsupportedModelError
from dpvr.backbones.registry import adapter_class, adapter_for, register, supported_model_types

# Families (importing registers them).
from dpvr.backbones import llava as _llava  # noqa: F401,E402
from dpvr.backbones import qwen_vl as _qwen_vl  # noqa: F401,E402
from dpvr.backbones import internvl as _internvl  # noqa: F401,E402
from dpvr.backbones import mistral3 as _mistral3  # noqa: F401,E402
from dpvr.backbones import idefics3 as _idefics3  # noqa: F401,E402
from dpvr.backbones import gemma3 as _gemma3  # noqa: F401,E402

__all__ = [
    "BackboneAdapter", "LMInputs", "Positions", "UnsupportedModelError",
    "adapter_class", "adapter_for", "register", "supported_model_types",
]
