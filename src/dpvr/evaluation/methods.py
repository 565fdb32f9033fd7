"""Method specs: one short string per evaluated method, shared by ``dpvr eval`` and the lmms-eval plugin.

Grammar (``[]`` optional)::

    SPEC    := [LABEL "="] METHOD
    METHOD  := "vanilla"                              the base model, unchanged (alias: base)
             | "adapter:" PATH ["," FASTV]            a trained DPVR adapter (side branch + dpvr_config.json);
                                                      FASTV adds FastV pruning in the shallow stack
             | "lora:" PATH                           a peft LoRA adapter on the base (dpvr train --method lora)
             | "full:" PATH                           a full checkpoint (dpvr train --method full: OUT/model)
             | "fastv" [":" "k=" INT] ["," "ratio=" R]   FastV (default k=2, ratio=0.5), no training
             | "vtw:k=" INT                           VTW: image tokens withdrawn from layer k on
    FASTV   := "fastv_k=" INT ["," "fastv_ratio=" R]  (either key may come alone)
    LABEL   := name shown in the table (default: derived from METHOD)

Examples: ``vanilla``, ``lf=adapter:runs/lf/adapter``, ``adapter:runs/lf/adapter,fastv_k=2,fastv_ratio=0.5``,
``lora:runs/lora16/adapter``, ``full:runs/full/model``, ``fastv:k=2,ratio=0.25``, ``vtw:k=4``.

A PATH ends at the first ``,key=`` (so a path may contain ``=`` or ``:`` but not ``,word=``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

KINDS = ("vanilla", "adapter", "lora", "full", "fastv", "vtw")
_ALIASES = {"base": "vanilla"}
_KEYS = {  # allowed keys per kind -> type
    "vanilla": {}, "lora": {}, "full": {},
    "adapter": {"fastv_k": int, "fastv_ratio": float},
    "fastv": {"k": int, "ratio": float},
    "vtw": {"k": int},
}
_PATH_KINDS = ("adapter", "lora", "full")
_LABEL = re.compile(r"[A-Za-z0-9_.+\-@ ()\[\]]+")


@dataclass(frozen=True)
class MethodSpec:
    """A parsed method spec (see the module docstring for the grammar)."""

    kind: str
    path: str | None = None
    options: dict = field(default_factory=dict)
    label: str = ""
    text: str = ""  # the spec as given

    def to_dict(self) -> dict:
        return {"label": self.label, "kind": self.kind, "path": self.path, "options": dict(self.options),
                "spec": self.text}

    def dpvr_config(self):
        """The `DPVRConfig` of an inference-only peer (fastv, vtw), or None."""
        from dpvr.config import DPVRConfig

        if self.kind == "fastv":
            return DPVRConfig(variant="fastv", fastv_k=self.options.get("k"), fastv_ratio=self.options.get("ratio"))
        if self.kind == "vtw":
            return DPVRConfig(variant="vtw", split=self.options["k"])
        return None


def _error(text: str, why: str) -> ValueError:
    return ValueError(
        f"bad method spec {text!r}: {why}. Forms: vanilla | adapter:PATH[,fastv_k=K,fastv_ratio=R] | lora:PATH | "
        "full:PATH | fastv[:k=K,ratio=R] | vtw:k=K, optionally prefixed by LABEL= (see `dpvr eval --help`)"
    )


def _convert(text: str, key: str, value: str, typ):
    try:
        out = typ(value)
    except ValueError:
        raise _error(text, f"{key}={value!r} is not {'an integer' if typ is int else 'a number'}") from None
    if typ is int and out < 1:
        raise _error(text, f"{key}={value} must be >= 1")
    if typ is float and not 0.0 <= out <= 1.0:
        raise _error(text, f"{key}={value} must lie in [0, 1] (the share of image tokens kept)")
    return out


def parse_method(text: str) -> MethodSpec:
    """Parse one spec string; ValueError names what is wrong and shows the grammar."""
    raw = text
    text = text.strip()
    if not text:
        raise _error(raw, "it is empty")
    label = None
    head = text.split(":", 1)[0]
    if "=" in head:  # LABEL=METHOD (a key=value never comes before the first ':')
        label, text = (s.strip() for s in text.split("=", 1))
        if not label or not _LABEL.fullmatch(label):
            raise _error(raw, f"label {label!r} must be non-empty and use letters, digits, spaces or _ . + - @ ( ) [ ]")
    kind, _, rest = text.partition(":")
    kind = _ALIASES.get(kind.strip().lower(), kind.strip().lower())
    if kind not in KINDS:
        raise _error(raw, f"unknown method {kind!r} (choose one of {', '.join(KINDS)})")
    path = None
    if kind in _PATH_KINDS:
        m = re.search(r",\s*[A-Za-z_]\w*\s*=", rest)
        path, rest = (rest[: m.start()], rest[m.start() + 1:]) if m else (rest, "")
        path = path.strip()
        if not path:
            raise _error(raw, f"{kind} needs a folder: {kind}:PATH")
    elif kind == "vanilla" and rest.strip():
        raise _error(raw, "vanilla takes no options")
    options = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = (s.strip() for s in item.partition("="))
        if not eq or not value:
            raise _error(raw, f"{item!r} is not key=value")
        allowed = _KEYS[kind]
        if key not in allowed:
            known = ", ".join(allowed) or "none"
            raise _error(raw, f"unknown option {key!r} for {kind} (options: {known})")
        if key in options:
            raise _error(raw, f"option {key!r} is given twice")
        options[key] = _convert(raw, key, value, allowed[key])
    if kind == "vtw" and "k" not in options:
        raise _error(raw, "vtw needs its withdrawal layer: vtw:k=K")
    spec = MethodSpec(kind=kind, path=path, options=options, label="", text=raw.strip())
    spec.dpvr_config()  # field checks of DPVRConfig (layer-count checks come when the model is loaded)
    return MethodSpec(kind=kind, path=path, options=options, label=label or default_label(spec), text=raw.strip())


def default_label(spec: MethodSpec) -> str:
    """``vanilla``, ``fastv(k=2,ratio=0.25)``, ``vtw(k=4)``, ``adapter(<run>)``, ``lora(<run>)``, ..."""
    opts = ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in spec.options.items())
    if spec.path is None:
        return f"{spec.kind}({opts})" if opts else spec.kind
    p = Path(spec.path)
    name = p.parent.name if p.name in ("adapter", "model") and p.parent.name else p.name
    name = name or str(p)
    return f"{spec.kind}({name}{',' + opts if opts else ''})"


def parse_methods(texts: list[str]) -> list[MethodSpec]:
    """Parse several specs; labels must be unique (give LABEL= to tell two apart)."""
    specs = [parse_method(t) for t in texts]
    check_unique_labels(specs)
    return specs


def check_unique_labels(specs: list[MethodSpec]) -> None:
    seen: dict[str, str] = {}
    for s in specs:
        if s.label in seen:
            raise ValueError(f"two methods share the label {s.label!r} ({seen[s.label]!r} and {s.text!r}): "
                             "prefix one with LABEL= to tell them apart")
        seen[s.label] = s.text
