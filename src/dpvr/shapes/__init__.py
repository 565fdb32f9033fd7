"""Model shapes without weights: bundled LLaVA ``config.json`` files, meta-device models, parameter counts.

Bundled shapes (``dpvr.shapes.BUNDLED``), each a HF ``LlavaConfig`` JSON inside the package:

=================  ===========================================================================
``llava-1.5-7b``   LLaVA-1.5-7B: Vicuna-7B (32 layers, hidden 4096), CLIP ViT-L/14-336, 576 image tokens
``llava-1.5-13b``  LLaVA-1.5-13B: Vicuna-13B (40 layers, hidden 5120), same tower
``cpu-mid``        random-weight CPU benchmark shape: hidden 1024, 16 layers, 576 image tokens, small tower
``tiny``           CI smoke shape: hidden 64, 4 layers, 16 image tokens
=================  ===========================================================================

Example::

    from dpvr.shapes import load_shape_config, build_meta_model, parameter_counts
    from dpvr.config import DPVRConfig

    cfg = load_shape_config("llava-1.5-7b")
    model = build_meta_model(cfg)                      # no memory, no download
    parameter_counts(cfg, DPVRConfig(variant="lf", split=18))["side_branch"]  # 202_383_360
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration

from dpvr.config import DPVRConfig

BUNDLED: tuple[str, ...] = ("llava-1.5-7b", "llava-1.5-13b", "cpu-mid", "tiny")

# The split layer each bundled shape is usually run with (SPEC §2: 7B 18, 13B 26).
DEFAULT_SPLITS: dict[str, int] = {"llava-1.5-7b": 18, "llava-1.5-13b": 26, "cpu-mid": 9, "tiny": 2}


def shape_path(name: str) -> Path:
    """Path of a bundled shape's JSON file."""
    if name not in BUNDLED:
        raise ValueError(f"unknown bundled shape {name!r}: choose one of {', '.join(BUNDLED)} or pass a config.json path")
    return Path(str(resources.files("dpvr.shapes").joinpath(f"{name}.json")))


def load_shape_config(name_or_path: str | Path) -> LlavaConfig:
    """A ``LlavaConfig`` from a bundled shape name, a ``config.json`` file, or a model directory holding one.

    Keys starting with ``_comment`` are dropped. Raises ``FileNotFoundError`` for a missing path and
    ``ValueError`` for a file that is not a LLaVA config.
    """
    text = str(name_or_path)
    if text in BUNDLED:
        path = shape_path(text)
    else:
        path = Path(text)
        if path.is_dir():
            path = path / "config.json"
        if not path.exists():
            raise FileNotFoundError(
                f"no shape {text!r}: not a bundled shape ({', '.join(BUNDLED)}) and no such file or model directory"
            )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict) or data.get("model_type") != "llava":
        found = data.get("model_type") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path} is not a LLaVA config.json (model_type {found!r}, expected 'llava')")
    data = {k: v for k, v in data.items() if not k.startswith("_comment")}
    config = LlavaConfig.from_dict(data)
    config.name_or_path = text
    return config


def shape_name(config: LlavaConfig) -> str:
    """The bundled name or path a config was loaded from (``"custom"`` if built in code)."""
    return getattr(config, "name_or_path", "") or "custom"


def default_split(config: LlavaConfig) -> int:
    """The usual split layer of a bundled shape; other shapes need an explicit split."""
    name = shape_name(config)
    if name in DEFAULT_SPLITS:
        return DEFAULT_SPLITS[name]
    raise ValueError(
        f"shape {name!r} has no default split layer: pass one explicitly (1..{config.text_config.num_hidden_layers - 1})"
    )


def build_meta_model(config: LlavaConfig) -> LlavaForConditionalGeneration:
    """A ``LlavaForConditionalGeneration`` of this shape on the meta device: every parameter has its
    real shape and dtype, no storage is allocated and nothing is downloaded."""
    with torch.device("meta"):
        return LlavaForConditionalGeneration(config)


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_counts(config: LlavaConfig, dpvr_config: DPVRConfig | None = None) -> dict[str, int]:
    """Parameter counts of a LLaVA shape, counted on a meta-device model (exact, no weights).

    Returns ``total`` (the base model), ``vision_tower``, ``projector``, ``vision`` (tower + projector),
    ``language_model`` (embeddings, decoder layers, final norm and ``lm_head``), ``decoder_layer`` (one
    layer), ``side_branch`` (the D trainable layers DPVR adds: copies of layers ``s..s+D-1``; 0 when
    nothing is routed) and ``total_with_side_branch``.
    """
    model = build_meta_model(config)
    inner = model.model
    layers = inner.language_model.layers
    counts = {
        "total": _numel(model),
        "vision_tower": _numel(inner.vision_tower),
        "projector": _numel(inner.multi_modal_projector),
        "language_model": _numel(inner.language_model) + _numel(model.lm_head),
        "decoder_layer": _numel(layers[0]),
    }
    counts["vision"] = counts["vision_tower"] + counts["projector"]
    side = 0
    if dpvr_config is not None:
        plan = dpvr_config.resolve(len(layers))
        side = sum(_numel(layers[plan.split + j]) for j in range(plan.side_depth))
    counts["side_branch"] = side
    counts["total_with_side_branch"] = counts["total"] + side
    assert counts["total"] == counts["vision"] + counts["language_model"], "LLaVA has parts this count does not know"
    return counts
