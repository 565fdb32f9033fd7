"""Serving DPVR models with vLLM (extra ``dpvr[serve]``, its own environment: vLLM pins an older transformers).

vLLM finds the model through the ``vllm.general_plugins`` entry point (:func:`register`); a stock LLaVA
folder loads as the DPVR model with :func:`llm_kwargs`::

    from vllm import LLM
    from dpvr.serve import llm_kwargs
    llm = LLM(**llm_kwargs("path/to/llava", adapter="path/to/adapter"))

This package never imports dpvr's HF engine (``dpvr.engine``, ``dpvr.model``): it reads the adapter's
``dpvr_config.json`` and safetensors itself (:mod:`dpvr.serve.adapter`).
"""

from __future__ import annotations

from pathlib import Path

ARCHITECTURE = "DPVRLlavaForConditionalGeneration"


def register() -> None:
    """vLLM's plugin hook: register the model class.

    The class itself, not its ``"module:Class"`` name: vLLM inspects a model registered by name in a
    fresh subprocess (another import of vLLM, ~30 s on 2 cores) before every start.
    """
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        from dpvr.serve.model import DPVRLlavaForConditionalGeneration

        ModelRegistry.register_model(ARCHITECTURE, DPVRLlavaForConditionalGeneration)


def llm_kwargs(model: str | Path, adapter: str | Path | None = None, verify: bool = True) -> dict:
    """``vllm.LLM`` / engine arguments that load ``model`` (a LLaVA folder) as the DPVR model with ``adapter``.

    The adapter is checked against the model here (``verify``), so a mismatch fails before vLLM starts.
    Variants with text-only layers (``lf``) also get ``enforce_eager=True`` (their attention cannot be
    captured in a CUDA graph).
    """
    from dpvr.serve.adapter import load_serve_adapter

    adapter = None if adapter is None else str(Path(adapter).resolve())
    plan = load_serve_adapter(model, adapter, verify_base=verify).plan
    overrides = {"architectures": [ARCHITECTURE], "dpvr_adapter": adapter}
    out = {"model": str(Path(model).resolve()), "hf_overrides": overrides}
    if plan.layers_with_mode("text"):
        # text-only layers attend in torch with host-side indexing per request: no CUDA-graph capture
        out["enforce_eager"] = True
    return out
