"""A dpvr adapter as the vLLM plugin reads it: ``dpvr_config.json``, the side-branch weights, the base check.

Nothing here imports dpvr's HF engine: the base model's fingerprint is computed from its checkpoint
files (``config.json`` and the safetensors), with the same probes and checksum as
:func:`dpvr.adapter.base_fingerprint`, and a mismatch is refused with the HF engine's message
(:func:`dpvr.adapter.verify_fingerprint`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dpvr.adapter import CONFIG_NAME, WEIGHTS_NAME, probe_checksum, read_adapter_config, verify_fingerprint
from dpvr.config import DPVRConfig, ResolvedPlan

# Checkpoint keys of each fingerprint probe: transformers' legacy LLaVA layout first, then the 5.x one.
_PROBE_KEYS = {
    "embed_tokens": ("language_model.model.embed_tokens.weight", "model.language_model.embed_tokens.weight"),
    "layer0.q_proj": ("language_model.model.layers.0.self_attn.q_proj.weight",
                      "model.language_model.layers.0.self_attn.q_proj.weight"),
    "last_layer.mlp.down_proj": ("language_model.model.layers.{last}.mlp.down_proj.weight",
                                 "model.language_model.layers.{last}.mlp.down_proj.weight"),
    "lm_head": ("language_model.lm_head.weight", "lm_head.weight"),
}
SUPPORTED_VARIANTS = ("vanilla", "lf", "pc", "kv")


@dataclass(frozen=True)
class ServeAdapter:
    """What the vLLM model needs from an adapter folder (or ``vanilla`` without one)."""

    config: DPVRConfig
    plan: ResolvedPlan
    weights: Path | None  # adapter_model.safetensors; None for vanilla


def _config_json(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {model_dir} is not a Hugging Face model folder")
    return json.loads(path.read_text())


def _safetensors_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {model_dir}: the plugin reads safetensors checkpoints only")
    return files


def checkpoint_fingerprint(model_dir: str | Path) -> dict:
    """The base fingerprint of a LLaVA checkpoint folder, equal to ``base_fingerprint`` of the loaded model."""
    from safetensors import safe_open

    model_dir = Path(model_dir)
    cfg = _config_json(model_dir)
    text = cfg.get("text_config", {})
    n = text.get("num_hidden_layers")
    wanted = {name: [k.format(last=n - 1) for k in keys] for name, keys in _PROBE_KEYS.items()}
    probes = {}
    for file in _safetensors_files(model_dir):
        with safe_open(str(file), "pt") as f:
            names = set(f.keys())
            for probe, keys in wanted.items():
                for key in keys:
                    if probe not in probes and key in names:
                        probes[probe] = f.get_slice(key)[:].reshape(-1)[:256]
    missing = sorted(set(wanted) - set(probes))
    if missing:
        raise ValueError(f"{model_dir} has no tensor for {missing}: not a LLaVA checkpoint with a Llama language model")
    archs = cfg.get("architectures") or [None]
    return {
        "architecture": archs[0],
        "model_type": cfg.get("model_type"),
        "num_hidden_layers": n,
        "hidden_size": text.get("hidden_size"),
        "vocab_size": text.get("vocab_size"),
        "image_token_id": cfg.get("image_token_id", cfg.get("image_token_index")),
        "checksum": probe_checksum(probes),
    }


def load_serve_adapter(model_dir: str | Path, adapter_dir: str | Path | None, verify_base: bool = True) -> ServeAdapter:
    """Read and check ``adapter_dir`` against the checkpoint in ``model_dir`` (``None``: vanilla)."""
    model_dir = Path(model_dir)
    num_layers = _config_json(model_dir).get("text_config", {}).get("num_hidden_layers")
    if adapter_dir is None:
        config = DPVRConfig(variant="vanilla")
        return ServeAdapter(config, config.resolve(num_layers), None)
    adapter_dir = Path(adapter_dir)
    meta = read_adapter_config(adapter_dir)
    config = DPVRConfig.from_dict(meta["dpvr_config"])
    if config.variant not in SUPPORTED_VARIANTS or config.prunes:
        raise ValueError(
            f"adapter {adapter_dir} is variant {config.variant!r}{' with FastV pruning' if config.prunes else ''}: "
            f"the vLLM plugin serves {', '.join(SUPPORTED_VARIANTS)} (no pruning); use dpvr's HF engine for it"
        )
    if verify_base:
        verify_fingerprint(meta, checkpoint_fingerprint(model_dir), adapter_dir)
    weights = adapter_dir / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing; the adapter is incomplete, save it again")
    return ServeAdapter(config, config.resolve(num_layers), weights)


def side_branch_state(weights: Path) -> dict:
    """``{layer j: {HF parameter name: tensor}}`` from ``adapter_model.safetensors`` (``side_branch.layers.j.*``)."""
    from safetensors.torch import load_file

    out: dict[int, dict] = {}
    for key, tensor in load_file(str(weights)).items():
        parts = key.split(".")
        if parts[:2] != ["side_branch", "layers"]:
            raise ValueError(f"{weights} has an unexpected tensor {key!r}; the adapter is corrupt, save it again")
        out.setdefault(int(parts[2]), {})[".".join(parts[3:])] = tensor
    return out


__all__ = ["CONFIG_NAME", "ServeAdapter", "checkpoint_fingerprint", "load_serve_adapter", "side_branch_state"]
