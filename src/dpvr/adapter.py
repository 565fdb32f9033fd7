"""Adapter files: the side-branch weights (safetensors) and ``dpvr_config.json``.

``dpvr_config.json`` records the dpvr version, the `DPVRConfig`, and the base model's name and
fingerprint (architecture, layer count, hidden size, vocabulary, image token, and a checksum of a
few frozen tensors rounded to bfloat16 so that fp32 and bf16 loads of one checkpoint agree).
Loading refuses an adapter made for another base. Saving writes a complete directory next to the
target and swaps it in, so an interrupted save never leaves a half-written adapter behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "dpvr_config.json"
FORMAT_VERSION = 1


def base_fingerprint(base) -> dict:
    """Identify a base model by its shape and a checksum of a few frozen tensors."""
    from dpvr.engine.backbone import backbone_of

    bb = backbone_of(base)
    tc = bb.text_config
    probes = {
        "embed_tokens": bb.model.get_input_embeddings().weight,
        "layer0.q_proj": bb.layers[0].self_attn.q_proj.weight,
        "last_layer.mlp.down_proj": bb.layers[-1].mlp.down_proj.weight,
        "lm_head": bb.lm_head.weight,
    }
    return {
        "architecture": type(base).__name__,
        "model_type": getattr(base.config, "model_type", None),
        "num_hidden_layers": tc.num_hidden_layers,
        "hidden_size": tc.hidden_size,
        "vocab_size": tc.vocab_size,
        "image_token_id": bb.image_token_id,
        "checksum": probe_checksum(probes),
    }


# The tensors whose first values the checksum reads, in order (names as in ``base_fingerprint``).
PROBE_NAMES = ("embed_tokens", "layer0.q_proj", "last_layer.mlp.down_proj", "lm_head")


def probe_checksum(probes: dict) -> str:
    """sha256 over the first 256 values (as bfloat16) of each probe tensor, in ``PROBE_NAMES`` order."""
    digest = hashlib.sha256()
    for name in PROBE_NAMES:
        sample = probes[name].detach().reshape(-1)[:256].to("cpu", torch.bfloat16).view(torch.int16)
        digest.update(name.encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def adapter_files(model) -> tuple[dict, dict]:
    """(state dict of the side branch with its saved key names, metadata for dpvr_config.json)."""
    from dpvr import __version__

    if model.side_branch is None:
        raise ValueError(f"variant {model.dpvr_config.variant!r} with split {model.plan.split} has no side branch to save")
    state = {f"side_branch.{k}": v.detach().contiguous().cpu() for k, v in model.side_branch.state_dict().items()}
    meta = {
        "format_version": FORMAT_VERSION,
        "dpvr_version": __version__,
        "dpvr_config": model.dpvr_config.to_dict(),
        "base_model": {
            "name_or_path": getattr(model.base, "name_or_path", None) or getattr(model.base.config, "_name_or_path", None),
            "fingerprint": base_fingerprint(model.base),
        },
        "num_parameters": sum(v.numel() for v in state.values()),
    }
    return state, meta


def write_adapter_files(model, directory: str | Path) -> Path:
    """Write the adapter's two files into an existing folder, each through a temp file and a rename."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state, meta = adapter_files(model)
    for name in (WEIGHTS_NAME, CONFIG_NAME):
        tmp = directory / f".{name}.tmp"
        if name == WEIGHTS_NAME:
            save_file(state, str(tmp), metadata={"format": "pt"})
        else:
            tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, directory / name)
    return directory


def save_adapter(model, save_directory: str | Path) -> Path:
    """Write a complete adapter folder next to the target, then swap it in."""
    target = Path(save_directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a directory; choose another output path")
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write_adapter_files(model, staging)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "adapter")
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def read_adapter_config(adapter_dir: str | Path) -> dict:
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise FileNotFoundError(f"adapter directory {adapter_dir} does not exist; pass the folder written by save_pretrained")
    path = adapter_dir / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {adapter_dir} is not a dpvr adapter (save one with model.save_pretrained)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); the adapter is corrupt, save it again") from err
    for key in ("dpvr_config", "base_model"):
        if key not in meta:
            raise ValueError(f"{path} has no {key!r} entry; the adapter is corrupt or from another tool")
    return meta


def verify_fingerprint(meta: dict, actual: dict, adapter_dir: str | Path) -> None:
    """Refuse an adapter (``meta`` from ``dpvr_config.json``) whose base fingerprint differs from ``actual``."""
    expected = meta["base_model"].get("fingerprint", {})
    diffs = [f"{k}: adapter has {expected.get(k)!r}, base has {actual[k]!r}" for k in actual if expected.get(k) != actual[k]]
    if diffs:
        made_for = meta["base_model"].get("name_or_path") or "another model"
        raise ValueError(
            f"adapter {adapter_dir} was made for a different base model ({made_for}): " + "; ".join(diffs)
            + ". Load the base it was trained on (or pass verify_base=False if you know they match)."
        )


def load_adapter(cls, base, adapter_dir: str | Path, verify_base: bool = True):
    from dpvr.config import DPVRConfig

    adapter_dir = Path(adapter_dir)
    meta = read_adapter_config(adapter_dir)
    config = DPVRConfig.from_dict(meta["dpvr_config"])
    if verify_base:
        verify_fingerprint(meta, base_fingerprint(base), adapter_dir)
    model = cls(base, config)
    load_side_branch_weights(model, adapter_dir)
    return model


def load_side_branch_weights(model, adapter_dir: str | Path) -> None:
    """Load ``adapter_model.safetensors`` from ``adapter_dir`` into ``model.side_branch`` (strict)."""
    config = model.dpvr_config
    weights = Path(adapter_dir) / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing; the adapter is incomplete, save it again")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{weights} cannot be read ({err}); the adapter is corrupt, save it again") from err
    own = {f"side_branch.{k}": v for k, v in model.side_branch.state_dict().items()}
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not match the side branch of {config.variant!r} (split {config.split}, "
            f"depth {config.side_depth}): missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    bad_shapes = [k for k in own if own[k].shape != state[k].shape]
    if bad_shapes:
        raise ValueError(f"{weights} has tensors of the wrong shape for this base: {bad_shapes[:3]}")
    model.side_branch.load_state_dict({k[len("side_branch."):]: v for k, v in state.items()}, strict=True)
