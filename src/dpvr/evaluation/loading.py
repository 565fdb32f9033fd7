"""Turn a :class:`~dpvr.evaluation.methods.MethodSpec` into a model ready to generate, on one shared base.

    base, processor, path = load_base("llava-hf/llava-1.5-7b-hf")
    check_method(spec, base)                       # fail fast: files, base fingerprint, layer ranges
    with load_method(spec, base, processor) as m:  # m.model.generate(...), m.info (fingerprints)
        ...

vanilla, DPVR adapters and the peers wrap the one frozen base (no weight copies); a LoRA adapter is
injected into it and removed again on exit; a full checkpoint is loaded beside it and freed on exit.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from dpvr.config import PEER_VARIANTS
from dpvr.evaluation.methods import MethodSpec


def load_base(model_path=None, dtype: str = "auto", device: str = "auto", attn_implementation: str = "sdpa"):
    """(model, processor, path): a LLaVA-style model in eval mode and its processor; None = the embedded default."""
    from dpvr.analysis.saturate import load_model_and_processor

    return load_model_and_processor(model_path, dtype=dtype, device=device, attn_implementation=attn_implementation)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def folder_fingerprint(folder: Path, suffixes=(".safetensors", ".json", ".bin")) -> dict:
    """sha256 of the weight and config files directly in ``folder``."""
    return {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.suffix in suffixes}


@dataclass
class LoadedMethod:
    spec: MethodSpec
    model: torch.nn.Module
    processor: object
    info: dict = field(default_factory=dict)


def _folder(spec: MethodSpec) -> Path:
    path = Path(spec.path)
    if not path.is_dir():
        raise FileNotFoundError(f"method {spec.label!r}: folder {path} does not exist")
    return path


def _adapter_config(spec: MethodSpec, base):
    """The adapter's DPVRConfig (with the spec's FastV options), after checking the base fingerprint."""
    from dpvr.adapter import base_fingerprint, read_adapter_config
    from dpvr.config import DPVRConfig

    path = _folder(spec)
    if (path / "adapter_config.json").is_file() and not (path / "dpvr_config.json").is_file():
        raise ValueError(f"method {spec.label!r}: {path} is a peft (LoRA) adapter, not a DPVR adapter: use lora:{path}")
    meta = read_adapter_config(path)
    expected = meta["base_model"].get("fingerprint", {})
    actual = base_fingerprint(base)
    diffs = [f"{k}: adapter has {expected.get(k)!r}, base has {actual[k]!r}" for k in actual if expected.get(k) != actual[k]]
    if diffs:
        made_for = meta["base_model"].get("name_or_path") or "another model"
        raise ValueError(f"method {spec.label!r}: adapter {path} was made for a different base model ({made_for}): "
                         + "; ".join(diffs) + ". Pass the base it was trained on with --model.")
    config = DPVRConfig.from_dict(meta["dpvr_config"])
    if spec.options:
        config = replace(config, fastv_k=spec.options.get("fastv_k"), fastv_ratio=spec.options.get("fastv_ratio"))
    return config, meta


def _num_layers(base) -> int:
    from dpvr.engine.backbone import backbone_of

    return backbone_of(base).num_layers


def check_method(spec: MethodSpec, base) -> None:
    """Everything that can be checked without loading other weights: folders, files, base, layer ranges."""
    if spec.kind == "adapter":
        config, _ = _adapter_config(spec, base)
        config.resolve(_num_layers(base))
    elif spec.kind in PEER_VARIANTS:
        spec.dpvr_config().resolve(_num_layers(base))
    elif spec.kind == "lora":
        path = _folder(spec)
        if (path / "dpvr_config.json").is_file():
            raise ValueError(f"method {spec.label!r}: {path} is a DPVR adapter, not a LoRA adapter: use adapter:{path}")
        if not (path / "adapter_config.json").is_file():
            raise FileNotFoundError(f"method {spec.label!r}: {path / 'adapter_config.json'} is missing: "
                                    "not a peft adapter folder (dpvr train --method lora writes OUT/adapter)")
    elif spec.kind == "full":
        path = _folder(spec)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"method {spec.label!r}: {path / 'config.json'} is missing: not a model folder "
                                    "(dpvr train --method full writes OUT/model)")


def _release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def load_method(spec: MethodSpec, base, processor):
    """Yield a :class:`LoadedMethod`; the shared ``base`` is as it was when the block exits."""
    from dpvr.adapter import base_fingerprint, load_side_branch_weights
    from dpvr.model import get_dpvr_model

    check_method(spec, base)
    dev = next(base.parameters()).device
    info = {"kind": spec.kind, "path": spec.path, "options": dict(spec.options)}
    if spec.kind == "vanilla":
        yield LoadedMethod(spec, base, processor, info)
    elif spec.kind in PEER_VARIANTS:
        config = spec.dpvr_config()
        info["dpvr_config"] = config.to_dict()
        yield LoadedMethod(spec, get_dpvr_model(base, config).eval(), processor, info)
    elif spec.kind == "adapter":
        config, meta = _adapter_config(spec, base)
        model = get_dpvr_model(base, config)
        load_side_branch_weights(model, spec.path)
        model.to(dev).eval()
        info.update(dpvr_config=config.to_dict(), adapter_files=folder_fingerprint(Path(spec.path)),
                    adapter_base=meta["base_model"])
        try:
            yield LoadedMethod(spec, model, processor, info)
        finally:
            del model
            _release()
    elif spec.kind == "lora":
        from peft import PeftModel

        info["adapter_files"] = folder_fingerprint(Path(spec.path))
        info["peft_config"] = json.loads((Path(spec.path) / "adapter_config.json").read_text())
        try:
            model = PeftModel.from_pretrained(base, spec.path, is_trainable=False).eval()
        except (ValueError, RuntimeError, KeyError) as err:
            raise ValueError(f"method {spec.label!r}: LoRA adapter {spec.path} does not fit this base ({err})") from err
        try:
            yield LoadedMethod(spec, model, processor, info)
        finally:
            model.unload()  # the LoRA layers come out; the base modules are restored unchanged
            del model
            _release()
    elif spec.kind == "full":
        from dpvr.analysis.saturate import load_model_and_processor

        path = Path(spec.path)
        if _has_processor(path):
            model, own_processor, _ = load_model_and_processor(
                path, dtype=str(next(base.parameters()).dtype).replace("torch.", ""), device=str(dev),
                attn_implementation=base.config._attn_implementation or "sdpa")
        else:
            model, own_processor = _load_full_without_processor(path, base, dev), None
        info["fingerprint"] = base_fingerprint(model)
        try:
            yield LoadedMethod(spec, model, own_processor or processor, info)
        finally:
            del model
            _release()
    else:  # pragma: no cover - parse_method only makes the kinds above
        raise ValueError(f"unknown method kind {spec.kind!r}")


def _has_processor(path: Path) -> bool:
    return any((path / n).is_file() for n in ("processor_config.json", "preprocessor_config.json", "tokenizer.json",
                                              "tokenizer_config.json"))


def _load_full_without_processor(path: Path, base, dev):
    """A checkpoint saved without its processor (the Trainer saves only the model): use the base's."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(path, dtype=next(base.parameters()).dtype,
                                                        attn_implementation=base.config._attn_implementation or "sdpa")
    return model.to(dev).eval()
