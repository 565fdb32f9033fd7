"""Serving DPVR models with vLLM (extra ``dpvr[serve]``, its own environment: vLLM pins an older transformers).

vLLM finds the model through the ``vllm.general_plugins`` entry point (:func:`register`); a stock LLaVA
folder loads as the DPVR model with :func:`llm_kwargs`::

    from vllm import LLM
    from dpvr.serve import llm_kwargs
    llm = LLM(**llm_kwargs("path/to/llava", adapter="path/to/adapter"), enforce_eager=True)

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
    """
    from dpvr.serve.adapter import load_serve_adapter

    adapter = None if adapter is None else str(Path(adapter).resolve())
    if verify:
        load_serve_adapter(model, adapter)
    overrides = {"architectures": [ARCHITECTURE], "dpvr_adapter": adapter}
    return {"model": str(Path(model).resolve()), "hf_overrides": overrides}
