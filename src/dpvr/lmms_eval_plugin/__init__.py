"""lmms-eval 0.7 plugin: the model ``dpvr`` and task YAMLs for the embedded benchmarks (extra ``dpvr[eval]``).

Registered through lmms-eval's entry-point group ``lmms_eval.models`` (see pyproject.toml), so after
``pip install dpvr[eval]``::

    lmms-eval --model dpvr --model_args pretrained=llava-hf/llava-1.5-7b-hf,adapter=runs/lf/adapter \\
        --tasks pope --batch_size 8 --output_path logs/

    # the embedded benchmarks, offline (DPVR_BENCHMARK: another generated benchmark folder)
    lmms-eval --model dpvr --model_args method=vanilla --tasks dpvr_pope \\
        --include_path "$(python -c 'import dpvr.lmms_eval_plugin as p; print(p.TASKS_DIR)')"

Model args: ``pretrained`` (base model folder or hub id; default the embedded tiny LLaVA),
``adapter`` (a DPVR adapter folder, = ``method=adapter:PATH``), ``method`` (a ``dpvr eval`` method
spec; write its commas as ``;`` or quote it), ``fastv_k`` / ``fastv_ratio`` (with ``adapter``: the
FastV composition), ``batch_size``, ``device``, ``dtype``, ``max_new_tokens`` (default when a task
gives none), ``blind`` (blank images), ``attn_implementation``.

Nothing here imports lmms-eval at import time except :mod:`dpvr.lmms_eval_plugin.model`.
"""

from __future__ import annotations

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
MODEL_CLASS = "dpvr.lmms_eval_plugin.model.DPVRLmms"


def manifest():
    """Entry-point payload for lmms-eval's model registry (group ``lmms_eval.models``)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="dpvr", simple_class_path=MODEL_CLASS)
