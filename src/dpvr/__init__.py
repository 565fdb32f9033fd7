"""dpvr: modality-asymmetric token routing (DPVR) for LLaVA-style multimodal LLMs.

Wrap a stock ``transformers`` LLaVA model so that its deep layers skip the image tokens::

    from transformers import LlavaForConditionalGeneration
    import dpvr

    base = LlavaForConditionalGeneration.from_pretrained(path)
    model = dpvr.get_dpvr_model(base, dpvr.DPVRConfig(variant="lf", split=18))
    model.print_trainable_parameters()

The public names are imported on first use (PEP 562), so ``import dpvr`` and ``dpvr --help`` do not
load torch or transformers.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "DPVRConfig": "dpvr.config",
    "DPVRCache": "dpvr.engine.cache",
    "DPVRModel": "dpvr.model",
    "get_dpvr_model": "dpvr.model",
}

__all__ = ["DPVRCache", "DPVRConfig", "DPVRModel", "get_dpvr_model", "__version__"]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dpvr' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
