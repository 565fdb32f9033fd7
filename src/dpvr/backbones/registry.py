"""The registry of backbone adapters, keyed by ``config.model_type``."""

from __future__ import annotations

from torch import nn

from dpvr.backbones.base import BackboneAdapter, UnsupportedModelError

_ADAPTERS: dict[str, type[BackboneAdapter]] = {}


def register(cls: type[BackboneAdapter]) -> type[BackboneAdapter]:
    """Class decorator: serve ``cls.model_types`` with ``cls``."""
    for model_type in cls.model_types:
        if model_type in _ADAPTERS and _ADAPTERS[model_type] is not cls:
            raise ValueError(f"model type {model_type!r} already has an adapter ({_ADAPTERS[model_type].__name__})")
        _ADAPTERS[model_type] = cls
    return cls


def supported_model_types() -> list[str]:
    return sorted(_ADAPTERS)


def adapter_class(model_type: str) -> type[BackboneAdapter]:
    try:
        return _ADAPTERS[model_type]
    except KeyError:
        raise UnsupportedModelError(
            f"dpvr has no backbone adapter for model type {model_type!r}; supported: {', '.join(supported_model_types())}"
        ) from None


def adapter_for(model: nn.Module, route: str = "all") -> BackboneAdapter:
    """The adapter of ``model``'s family, bound to it. ``route``: 'all' visual tokens, or only 'image' / 'video'."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise UnsupportedModelError(f"{type(model).__name__} has no config.model_type; dpvr wraps transformers models")
    return adapter_class(model_type)(model, route=route)
