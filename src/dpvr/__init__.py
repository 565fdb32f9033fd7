"""dpvr: modality-asymmetric token routing (DPVR) for LLaVA-style multimodal LLMs.

Wrap a stock ``transformers`` LLaVA model so that its deep layers skip the image tokens::

    from transformers import LlavaForConditionalGeneration
    import dpvr

    base = LlavaForConditionalGeneration.from_pretrained(path)
    model = dpvr.get_dpvr_model(base, dpvr.DPVRConfig(variant="lf", split=18))
    model.print_trainable_parameters()
"""

__version__ = "0.1.0"

from dpvr.config import DPVRConfig  # noqa: E402

# The engine (transformers 5.24) loads on first use, so that ``dpvr.serve`` (vLLM's environment, an
# older transformers) can import the package without it.
_LAZY = {"DPVRCache": "dpvr.engine.cache", "DPVRModel": "dpvr.model", "get_dpvr_model": "dpvr.model"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dpvr' has no attribute {name!r}")

__all__ = ["DPVRCache", "DPVRConfig", "DPVRModel", "get_dpvr_model", "__version__"]
