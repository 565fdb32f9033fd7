"""Model shapes without weights: bundled ``config.json`` files of every family, meta-device models, parameter counts.

Bundled shapes (``dpvr.shapes.BUNDLED``), each the family's own HF config JSON inside the package,
written from the published values (nothing is downloaded), with a ``_dpvr`` block holding the
usual split and the default prompt layout (:mod:`dpvr.shapes.layout` turns it into token counts):

=========================  =====================================================================
``llava-1.5-7b``           LLaVA-1.5-7B: Vicuna-7B (32 layers), CLIP ViT-L/14-336, 576 image tokens
``llava-1.5-13b``          LLaVA-1.5-13B: Vicuna-13B (40 layers), same tower
``llava-v1.6-mistral-7b``  LLaVA-NeXT: Mistral-7B, anyres tiles + newlines (a 672×672 image: 2,928)
``llava-onevision-qwen2-7b``  LLaVA-OneVision: Qwen2-7B, SigLIP, anyres_max_9; image and 16-frame video
``qwen2.5-vl-7b``          Qwen2.5-VL-7B: M-RoPE, 14-px patches merged 2×2; 1280×720 image, 16-frame video
``qwen3-vl-8b``            Qwen3-VL-8B: 16-px patches, deepstack into LM layers 0-2; image and video
``gemma-3-4b``             Gemma 3 4B: 5 sliding-window layers per global one, 256 tokens per image
``internvl3-8b``           InternVL3-8B: Qwen2.5-7B, 256 tokens per 448-px tile, up to 12 tiles + thumbnail
``smolvlm-2.2b``           SmolVLM2-2.2B: 81 tokens per 384-px tile + a global image
``mistral-small-3.1-24b``  Mistral Small 3.1 24B: Pixtral tower, [IMG_BREAK] per row
``cpu-mid``                random-weight CPU benchmark shape (LLaVA): hidden 1024, 16 layers, 576 image tokens
``tiny``                   CI smoke shape (LLaVA): hidden 64, 4 layers, 16 image tokens
=========================  =====================================================================

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
from transformers import CONFIG_MAPPING, AutoModelForImageTextToText, PretrainedConfig

from dpvr.config import DPVRConfig

LLAVA_SHAPES: tuple[str, ...] = ("llava-1.5-7b", "llava-1.5-13b")
FAMILY_SHAPES: tuple[str, ...] = (
    "llava-v1.6-mistral-7b", "llava-onevision-qwen2-7b", "qwen2.5-vl-7b", "qwen3-vl-8b",
    "gemma-3-4b", "internvl3-8b", "smolvlm-2.2b", "mistral-small-3.1-24b",
)
# Real-size shapes (the published dimensions of each model), then the random-weight benchmark shapes.
PUBLISHED: tuple[str, ...] = LLAVA_SHAPES + FAMILY_SHAPES
BUNDLED: tuple[str, ...] = PUBLISHED + ("cpu-mid", "tiny")

# The split layer of the shapes whose JSON has no ``_dpvr.split`` (SPEC §2: 7B 18, 13B 26).
DEFAULT_SPLITS: dict[str, int] = {"llava-1.5-7b": 18, "llava-1.5-13b": 26, "cpu-mid": 9, "tiny": 2}


def shape_path(name: str) -> Path:
    """Path of a bundled shape's JSON file."""
    if name not in BUNDLED:
        raise ValueError(f"unknown bundled shape {name!r}: choose one of {', '.join(BUNDLED)} or pass a config.json path")
    return Path(str(resources.files("dpvr.shapes").joinpath(f"{name}.json")))


def load_shape_config(name_or_path: str | Path) -> PretrainedConfig:
    """The config of a bundled shape name, a ``config.json`` file, or a model directory holding one,
    as its family's config class (``LlavaConfig``, ``Qwen2_5_VLConfig``, ...), picked by ``model_type``.

    Keys starting with ``_`` are dropped; the ``_dpvr`` block (split, prompt layout) is kept as
    ``config._dpvr_shape``. Raises ``FileNotFoundError`` for a missing path and ``ValueError`` for a
    file that is not a vision-language config of a known model type.
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
    model_type = data.get("model_type") if isinstance(data, dict) else None
    if model_type not in CONFIG_MAPPING or "vision_config" not in data:
        found = model_type if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path} is not a vision-language model config.json (model_type {found!r}; expected one "
                         f"with a vision_config, e.g. 'llava', 'qwen2_5_vl', 'gemma3')")
    meta = data.get("_dpvr") or data.get("_dpvr_shape")
    data = {k: v for k, v in data.items() if not k.startswith("_")}
    config = CONFIG_MAPPING[model_type].from_dict(data)
    config.name_or_path = text
    if meta:
        config._dpvr_shape = meta
    return config


def shape_name(config: PretrainedConfig) -> str:
    """The bundled name or path a config was loaded from (``"custom"`` if built in code)."""
    return getattr(config, "name_or_path", "") or "custom"


def text_config(config: PretrainedConfig) -> PretrainedConfig:
    """The language model's config of any family."""
    return config.get_text_config()


def num_layers(config: PretrainedConfig) -> int:
    return text_config(config).num_hidden_layers


def default_split(config: PretrainedConfig) -> int:
    """The usual split layer of a bundled shape (about 0.56·N, after Qwen3-VL's deepstack layers);
    other shapes need an explicit split."""
    meta = getattr(config, "_dpvr_shape", None) or {}
    if "split" in meta:
        return int(meta["split"])
    name = shape_name(config)
    if name in DEFAULT_SPLITS:
        return DEFAULT_SPLITS[name]
    raise ValueError(f"shape {name!r} has no default split layer: pass one explicitly (1..{num_layers(config) - 1})")


def build_meta_model(config: PretrainedConfig) -> torch.nn.Module:
    """The family's image-text-to-text model of this shape on the meta device (``LlavaForConditionalGeneration``,
    ``Qwen2_5_VLForConditionalGeneration``, ...): every parameter has its real shape and dtype, no storage is
    allocated and nothing is downloaded."""
    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(config)


def _numel(module: torch.nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def _child(module: torch.nn.Module, *names: str) -> torch.nn.Module | None:
    return next((getattr(module, n) for n in names if isinstance(getattr(module, n, None), torch.nn.Module)), None)


def parameter_counts(config: PretrainedConfig, dpvr_config: DPVRConfig | None = None) -> dict[str, int]:
    """Parameter counts of a shape of any family, counted on a meta-device model (exact, no weights).

    Returns ``total`` (the base model; a tied LM head counted once), ``language_model`` (embeddings,
    decoder layers, final norm and an untied ``lm_head``), ``vision`` (everything else: tower and
    projector), ``vision_tower`` and ``projector`` (the rest of ``vision``: projector or connector,
    LLaVA-NeXT's ``image_newline``; a Qwen tower holds its own merger), ``decoder_layer`` (the first layer), ``lm_head_tied`` (1 or 0), ``side_branch`` (the D
    trainable layers DPVR adds: copies of layers ``s..s+D-1``; 0 when nothing is routed) and
    ``total_with_side_branch``.
    """
    model = build_meta_model(config)
    decoder = model.get_decoder()
    layers = decoder.layers
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is model.get_input_embeddings().weight
    counts = {
        "total": _numel(model),
        "language_model": _numel(decoder) + (0 if tied else _numel(head)),
        "decoder_layer": _numel(layers[0]),
        "lm_head_tied": int(tied),
    }
    counts["vision"] = counts["total"] - counts["language_model"]
    inner = getattr(model, "model", model)
    counts["vision_tower"] = _numel(_child(inner, "vision_tower", "visual", "vision_model"))
    counts["projector"] = counts["vision"] - counts["vision_tower"]  # projector/connector, LLaVA-NeXT's image_newline
    side = 0
    if dpvr_config is not None:
        plan = dpvr_config.resolve(len(layers))
        side = sum(_numel(layers[plan.split + j]) for j in range(plan.side_depth))
    counts["side_branch"] = side
    counts["total_with_side_branch"] = counts["total"] + side
    assert decoder.get_input_embeddings() is model.get_input_embeddings(), "the LM count missed the embeddings"
    return counts
