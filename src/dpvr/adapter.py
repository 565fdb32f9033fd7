"""Adapter files: the side-branch weights (safetensors) and ``dpvr_config.json``.

``dpvr_config.json`` records the dpvr version, the `DPVRConfig`, and the base model's name and
fingerprint (architecture, layer count, hidden size, vocabulary, image token, and a checksum of a
few frozen tensors rounded to bfloat16 so that fp32 and bf16 loads of one checkpoint agree).
Loading refuses an adapter made for another base.

Integrity (format 2): ``dpvr_config.json`` carries a manifest, ``integrity``: the sha256 and size
of the weights file and the sha256 of the config itself (its canonical JSON without the manifest).
Loading refuses a config edited by hand (re-sign a deliberate edit with ``dpvr adapter rehash
DIR``), weights that are not the ones saved with it, non-finite weights, and a ``format_version``
newer than this dpvr knows. Adapters of format 1 (no manifest) still load, with one warning.

Saving writes a complete folder next to the target and swaps it in with one atomic exchange
(``dpvr.io.swap_in``): at every instant the target is the complete old or the complete new adapter.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from dpvr.io import make_temp_dir, recover, swap_in, write_bytes_atomic

from dpvr.validation import validate_adapter_config

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "dpvr_config.json"
FORMAT_VERSION = 2
INTEGRITY_KEY = "integrity"
REHASH_HINT = "if you edited it on purpose, re-sign it with `dpvr adapter rehash {dir}`"

log = logging.getLogger(__name__)


class AdapterIntegrityError(ValueError):
    """The adapter's files do not match its manifest (edited, swapped, truncated or non-finite)."""


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


def config_digest(meta: dict) -> str:
    """sha256 of the config's canonical JSON, the manifest itself left out."""
    body = {k: v for k, v in meta.items() if k != INTEGRITY_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()).hexdigest()


def sign(meta: dict, weights: bytes) -> dict:
    """``meta`` with its manifest: the weights file's sha256 and size, and the config's own digest."""
    meta = {k: v for k, v in meta.items() if k != INTEGRITY_KEY}
    meta[INTEGRITY_KEY] = {
        "files": {WEIGHTS_NAME: {"sha256": hashlib.sha256(weights).hexdigest(), "bytes": len(weights)}},
        "config_sha256": config_digest(meta),
    }
    return meta


def _config_text(meta: dict) -> str:
    return json.dumps(meta, indent=2, sort_keys=True) + "\n"


def write_adapter_files(model, directory: str | Path) -> Path:
    """Write the adapter's two files into a folder, each atomically; the config (and its manifest) last."""
    directory = Path(directory)
    state, meta = adapter_files(model)
    weights = save_safetensors(state, metadata={"format": "pt"})
    write_bytes_atomic(directory / WEIGHTS_NAME, weights)
    write_bytes_atomic(directory / CONFIG_NAME, _config_text(sign(meta, weights)).encode())
    return directory


def save_adapter(model, save_directory: str | Path) -> Path:
    """Write a complete adapter folder next to the target, then swap it in atomically."""
    target = Path(save_directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a directory; choose another output path")
    recover(target)  # leftovers of an interrupted save
    staging = make_temp_dir(target.parent, f".{target.name}.tmp-")
    try:
        write_adapter_files(model, staging)
        swap_in(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def rehash_adapter(adapter_dir: str | Path) -> dict:
    """Re-sign ``adapter_dir`` after a deliberate edit: recompute its manifest from the files as they are."""
    adapter_dir = Path(adapter_dir)
    meta = _read_meta(adapter_dir)
    weights_path = adapter_dir / WEIGHTS_NAME
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path} is missing; nothing to sign")
    meta["format_version"] = FORMAT_VERSION
    signed = sign(meta, weights_path.read_bytes())
    write_bytes_atomic(adapter_dir / CONFIG_NAME, _config_text(signed).encode())
    return signed


def _read_meta(adapter_dir: Path) -> dict:
    if not adapter_dir.exists():
        recover(adapter_dir)  # a save interrupted between its two renames (file systems without exchange)
    if not adapter_dir.is_dir():
        raise FileNotFoundError(f"adapter directory {adapter_dir} does not exist; pass the folder written by save_pretrained")
    path = adapter_dir / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {adapter_dir} is not a dpvr adapter (save one with model.save_pretrained)")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); the adapter is corrupt, save it again") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} holds a JSON {type(meta).__name__}, not an object; the adapter is corrupt, save it again")
    return meta


def check_integrity(adapter_dir: str | Path, meta: dict) -> str | None:
    """Check the format version and the config's digest; return the weights' expected sha256 (None: format 1)."""
    path = Path(adapter_dir) / CONFIG_NAME
    version = meta.get("format_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise AdapterIntegrityError(f"{path}: format_version {version!r} is not a positive integer; the adapter is "
                                    "corrupt or edited, " + REHASH_HINT.format(dir=adapter_dir))
    if version > FORMAT_VERSION:
        from dpvr import __version__

        raise AdapterIntegrityError(f"{path} has format_version {version}, newer than this dpvr {__version__} reads "
                                    f"(up to {FORMAT_VERSION}); upgrade dpvr (pip install -U dpvr) to load it")
    integrity = meta.get(INTEGRITY_KEY)
    if version == 1 and integrity is None:
        log.warning("%s has no integrity manifest (an adapter saved before dpvr format 2): loading it unchecked; "
                    "sign it with `dpvr adapter rehash %s`", path, adapter_dir)
        return None
    try:
        expected_config = integrity["config_sha256"]
        expected_weights = integrity["files"][WEIGHTS_NAME]["sha256"]
    except (TypeError, KeyError):
        raise AdapterIntegrityError(f"{path}: its integrity manifest is missing or incomplete, so the adapter cannot "
                                    "be checked; " + REHASH_HINT.format(dir=adapter_dir)) from None
    if config_digest(meta) != expected_config:
        raise AdapterIntegrityError(f"{path} was edited after it was saved (its content no longer matches the "
                                    "checksum written at save time); save the adapter again, or "
                                    + REHASH_HINT.format(dir=adapter_dir))
    return expected_weights


def read_adapter_config(adapter_dir: str | Path) -> dict:
    """``dpvr_config.json`` of ``adapter_dir``, after checking its format version and manifest."""
    adapter_dir = Path(adapter_dir)
    meta = _read_meta(adapter_dir)
    check_integrity(adapter_dir, meta)
    for key in ("dpvr_config", "base_model"):
        if key not in meta:
            raise ValueError(f"{adapter_dir / CONFIG_NAME} has no {key!r} entry; the adapter is corrupt or from another tool")
    return validate_adapter_config(meta, adapter_dir / CONFIG_NAME)


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
    """Load ``adapter_model.safetensors`` from ``adapter_dir`` into ``model.side_branch`` (strict).

    The file must match the sha256 in the folder's manifest (when it has one) and hold finite values.
    """
    config = model.dpvr_config
    adapter_dir = Path(adapter_dir)
    weights = adapter_dir / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing; the adapter is incomplete, save it again")
    expected = None
    if (adapter_dir / CONFIG_NAME).is_file():
        expected = check_integrity(adapter_dir, _read_meta(adapter_dir))
    data = weights.read_bytes()
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise AdapterIntegrityError(
            f"{weights} is not the weights file saved with {adapter_dir / CONFIG_NAME} (sha256 differs: replaced, "
            f"truncated or modified); save the adapter again, or " + REHASH_HINT.format(dir=adapter_dir))
    try:
        state = load_safetensors(data)
    except (SafetensorError, OSError, ValueError) as err:
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
    bad = {k: int((~torch.isfinite(v)).sum()) for k, v in state.items() if v.is_floating_point()}
    bad = {k: n for k, n in bad.items() if n}
    if bad:
        first = next(iter(bad))
        raise AdapterIntegrityError(
            f"{weights} holds {sum(bad.values()):,d} non-finite values (NaN/inf, first in {first}); the adapter is "
            "unusable (a diverged training or a corrupt file): retrain it or load another")
    model.side_branch.load_state_dict({k[len("side_branch."):]: v for k, v in state.items()}, strict=True)
