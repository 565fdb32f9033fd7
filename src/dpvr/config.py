"""`DPVRConfig`: which variant, where to split, which layers fuse, how deep the side branch is.

The config is validated twice: field by field when it is built (unknown variant, conflicting
fusion settings), and against a backbone's layer count by :meth:`DPVRConfig.resolve` (split out
of range, fusion layer in the shallow stack, side branch deeper than the deep stack).

Per-layer modes (SPEC §3), plus an optional pruning point (SPEC §6), are the config's whole
effect on the forward pass:

=========  =====================================================================
``full``   shallow stack (and every layer of ``vanilla``): all positions, unchanged
``text``   text positions only; image positions are absent from the computation
``kv``     text queries; keys/values over text and image (image K/V from the side output)
``fuse``   image positions set to the side output, then a full layer over all positions
=========  =====================================================================

Inference-time peers (SPEC §6) are configurations of the same engine, not other model classes:

- ``variant="vtw"`` (VTW, visual tokens withdrawal): ``split=k`` is the layer from which image
  tokens are withdrawn; layers ``0..k-1`` are ``full``, every later layer ``text``; no side branch.
  It is ``ideal`` without a side branch; ``split=N`` withdraws nothing (= vanilla).
- ``variant="fastv"`` (FastV): layers ``0..k-1`` see every position (``k = fastv_k``, default 2);
  after layer ``k-1`` each sample keeps the ``fastv_ratio`` (default 0.5) share of its image tokens
  that receive the most head-mean attention from its last query at layer ``k-1``; layers ``k..N-1``
  run ``full`` over what is kept. No side branch, no training.
- FastV composed with DPVR: a DPVR variant (``lf``, ``pc``, ``kv``, ``ideal``) with ``fastv_k`` (and
  ``fastv_ratio``) set prunes in the shallow stack (``fastv_k <= split``) and routes the deep stack as
  usual over what is kept; the side branch sees only the kept image tokens.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

VARIANTS = ("vanilla", "lf", "pc", "kv", "ideal", "fastv", "vtw")
DPVR_VARIANTS = ("lf", "pc", "kv", "ideal")  # the variants with a side branch
PEER_VARIANTS = ("fastv", "vtw")  # inference-time peers: no side branch, no training
FASTV_DEFAULT_K = 2
# Training choices named here (not in dpvr.train) so the CLI can list them without importing transformers:
# HF Trainer schedules that need no extra arguments ("constant" has no warmup; the others warm up linearly first)
LR_SCHEDULERS = ("cosine", "linear", "constant_with_warmup", "constant", "polynomial", "inverse_sqrt",
                 "cosine_with_restarts")
DISTILL_FEATURE_LOSSES = ("mse", "cosine")  # dpvr.train.distill
FASTV_DEFAULT_RATIO = 0.5
SIDE_INITS = ("copy", "random")
MODES = ("full", "text", "kv", "fuse")
ROUTES = ("all", "image", "video")  # which visual placeholder tokens count as routed positions

# Mode of every deep layer for variants whose schedule does not depend on fusion layers.
_UNIFORM_DEEP_MODE = {"pc": "fuse", "kv": "kv", "ideal": "text"}


@dataclass
class DPVRConfig:
    """How a LLaVA-style model is routed (SPEC §3–4).

    Args:
        variant: ``vanilla`` (no routing), ``lf`` (the method: text-only deep layers, image put
            back in the fusion layers), ``pc`` (every deep layer fuses), ``kv`` (every deep layer
            reads image keys/values), ``ideal`` (no fusion at all).
        split: first routed layer ``s`` (layers ``0..s-1`` run unchanged). Required except for
            ``vanilla``. ``split = N`` routes nothing.
        num_fusion_layers: ``lf`` only: the last K layers fuse (default 1).
        fusion_layers: ``lf`` only: an explicit set of deep layers that fuse (e.g. ``[24, 31]``);
            overrides ``num_fusion_layers``.
        side_depth: D, the number of side-branch decoder layers (copies of layers ``s..s+D-1``).
        side_init: ``copy`` (side layer j starts as a copy of backbone layer ``s+j``) or
            ``random`` (same class, freshly initialised).
        fastv_k: FastV's pruning layer k: layers ``0..k-1`` see every image token, layers ``k..`` only
            the kept ones (ranked by the attention of layer ``k-1``). Default 2 for ``fastv``; with a
            DPVR variant it turns on the composition (pruning in the shallow stack, ``k <= split``).
        fastv_ratio: FastV's R: the share of each sample's image tokens kept, in [0, 1]
            (``round(R * I)`` tokens; default 0.5).
        route: which visual tokens are routed (and ranked by FastV): ``all`` (image and video, the
            default), ``image`` or ``video`` only; the others stay in the text view.

    ``vtw`` takes its withdrawal layer k as ``split``. ``fastv`` and ``vtw`` have no side branch, so
    ``side_depth`` and ``side_init`` do not apply to them.
    """

    variant: str = "lf"
    split: int | None = None
    num_fusion_layers: int | None = None
    fusion_layers: list[int] | None = None
    side_depth: int = 1
    side_init: str = "copy"
    fastv_k: int | None = None
    fastv_ratio: float | None = None
    route: str = "all"

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}: choose one of {', '.join(VARIANTS)}")
        if self.route not in ROUTES:
            raise ValueError(f"unknown route {self.route!r}: choose one of {', '.join(ROUTES)} (which visual tokens are routed)")
        if self.side_init not in SIDE_INITS:
            raise ValueError(f"unknown side_init {self.side_init!r}: choose one of {', '.join(SIDE_INITS)}")
        if self.split is not None and (not isinstance(self.split, int) or isinstance(self.split, bool)):
            raise ValueError(f"split must be an integer layer index, got {self.split!r}")
        if self.variant == "vtw" and self.split is None:
            raise ValueError("variant 'vtw' needs its withdrawal layer: pass split=K (image tokens are dropped from layer K on)")
        if self.variant == "fastv" and self.split is not None:
            raise ValueError(
                f"variant 'fastv' has no split (got split={self.split}): FastV's pruning layer is fastv_k; "
                "to combine FastV with DPVR routing use a DPVR variant (e.g. 'lf') with split and fastv_k"
            )
        if self.variant not in ("vanilla", "fastv") and self.split is None:
            raise ValueError(f"variant {self.variant!r} needs a split layer: pass split=S (1 <= S < number of layers)")
        self._check_fastv_fields()
        if not isinstance(self.side_depth, int) or self.side_depth < 1:
            raise ValueError(f"side_depth must be an integer >= 1, got {self.side_depth!r}")
        has_fusion = self.fusion_layers is not None or self.num_fusion_layers is not None
        if has_fusion and self.variant != "lf":
            schedule = {"vanilla": "nothing is routed", "pc": "every deep layer fuses",
                        "kv": "every deep layer reads image keys/values", "ideal": "no layer fuses",
                        "fastv": "it prunes image tokens, nothing fuses",
                        "vtw": "image tokens are withdrawn, nothing fuses"}[self.variant]
            raise ValueError(
                f"fusion settings are only for variant 'lf'; variant {self.variant!r} has none ({schedule}): "
                "drop fusion_layers / num_fusion_layers"
            )
        if self.fusion_layers is not None:
            if not self.fusion_layers or not all(isinstance(i, int) for i in self.fusion_layers):
                raise ValueError(f"fusion_layers must be a non-empty list of layer indices, got {self.fusion_layers!r}")
            if len(set(self.fusion_layers)) != len(self.fusion_layers):
                raise ValueError(f"fusion_layers has duplicates: {self.fusion_layers}")
            if self.num_fusion_layers is not None and self.num_fusion_layers != len(self.fusion_layers):
                raise ValueError(
                    f"num_fusion_layers={self.num_fusion_layers} contradicts fusion_layers={self.fusion_layers}: give one of them"
                )
            self.fusion_layers = sorted(self.fusion_layers)
        if self.num_fusion_layers is not None and (not isinstance(self.num_fusion_layers, int) or self.num_fusion_layers < 1):
            raise ValueError(f"num_fusion_layers must be an integer >= 1, got {self.num_fusion_layers!r}")

    def _check_fastv_fields(self) -> None:
        has_fastv = self.fastv_k is not None or self.fastv_ratio is not None
        if has_fastv and self.variant in ("vanilla", "vtw"):
            raise ValueError(
                f"fastv_k / fastv_ratio do not apply to variant {self.variant!r}: use variant='fastv' "
                "(or a DPVR variant such as 'lf' to compose FastV with DPVR routing)"
            )
        if not has_fastv and self.variant != "fastv":
            return
        if self.fastv_k is None:
            self.fastv_k = FASTV_DEFAULT_K
        if self.fastv_ratio is None:
            self.fastv_ratio = FASTV_DEFAULT_RATIO
        if not isinstance(self.fastv_k, int) or isinstance(self.fastv_k, bool) or self.fastv_k < 1:
            raise ValueError(f"fastv_k must be an integer layer index >= 1 (FastV ranks at layer k-1), got {self.fastv_k!r}")
        ratio = self.fastv_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
            raise ValueError(f"fastv_ratio must be a number in [0, 1] (the share of image tokens kept), got {ratio!r}")
        self.fastv_ratio = float(ratio)

    @property
    def prunes(self) -> bool:
        """Whether FastV pruning is part of this config (``fastv`` or a composition)."""
        return self.fastv_k is not None

    # ------------------------------------------------------------------ resolution against a backbone
    def resolve(self, num_layers: int, min_split: int = 1, family: str = "this model") -> "ResolvedPlan":
        """Check the config against a backbone with ``num_layers`` decoder layers and return its plan.

        ``min_split``: the first layer routing may start at (Qwen3-VL adds deepstack visual features
        after its first layers, so a split or FastV's pruning must come after them).
        """
        n = num_layers
        if min_split > 1:
            for name, value in (("split", self.split), ("fastv_k", self.fastv_k)):
                if value is not None and value < min_split:
                    raise ValueError(
                        f"{name}={value} lies in layers 0..{min_split - 1}, where {family} adds visual features "
                        f"(deepstack); use {name} in {min_split}..{n - 1}"
                    )
        if self.variant == "vanilla":
            return ResolvedPlan(num_layers=n, split=n, modes=["full"] * n, fusion_layers=[], side_depth=0)
        if self.variant == "fastv":
            self._check_fastv_layer(n, n)
            return ResolvedPlan(num_layers=n, split=n, modes=["full"] * n, fusion_layers=[], side_depth=0,
                                prune_layer=self.fastv_k, keep_ratio=self.fastv_ratio)
        s = self.split
        if not 1 <= s <= n:
            raise ValueError(
                f"split={s} is outside 1..{n - 1} for a model with {n} decoder layers "
                f"(layers 0..s-1 stay unchanged; split={n} routes nothing)"
            )
        deep = list(range(s, n))
        if self.variant == "vtw":  # image tokens withdrawn from layer s on: text-only layers, no side branch
            return ResolvedPlan(num_layers=n, split=s, modes=["full"] * s + ["text"] * len(deep), fusion_layers=[],
                                side_depth=0)
        prune = {}
        if self.prunes:
            self._check_fastv_layer(n, s)
            prune = {"prune_layer": self.fastv_k, "keep_ratio": self.fastv_ratio}
        if not deep:  # split = N: nothing routed, no side branch
            if self.fusion_layers is not None or self.num_fusion_layers is not None:
                raise ValueError(f"split={s} leaves no deep layers, so there is nothing to fuse: drop the fusion settings")
            return ResolvedPlan(num_layers=n, split=n, modes=["full"] * n, fusion_layers=[], side_depth=0, **prune)
        if self.side_depth > len(deep):
            raise ValueError(
                f"side_depth={self.side_depth} is larger than the deep stack (layers {s}..{n - 1}, {len(deep)} layers): "
                f"use side_depth <= {len(deep)} or an earlier split"
            )
        if self.variant == "lf":
            if self.fusion_layers is not None:
                bad = [i for i in self.fusion_layers if i not in deep]
                if bad:
                    where = "in the shallow stack" if all(0 <= i < s for i in bad) else "outside the deep stack"
                    raise ValueError(
                        f"fusion layer(s) {bad} {where}: fusion layers must lie in the deep stack {s}..{n - 1} (split={s})"
                    )
                fusion = list(self.fusion_layers)
            else:
                k = self.num_fusion_layers or 1
                if k > len(deep):
                    raise ValueError(
                        f"num_fusion_layers={k} is more than the {len(deep)} deep layers ({s}..{n - 1}): "
                        f"use at most {len(deep)}"
                    )
                fusion = deep[-k:]
            modes = ["full"] * s + ["fuse" if i in fusion else "text" for i in deep]
        else:
            fusion = deep if self.variant == "pc" else []
            modes = ["full"] * s + [_UNIFORM_DEEP_MODE[self.variant]] * len(deep)
        return ResolvedPlan(num_layers=n, split=s, modes=modes, fusion_layers=fusion, side_depth=self.side_depth, **prune)

    def _check_fastv_layer(self, n: int, split: int) -> None:
        k = self.fastv_k
        if not 1 <= k <= n - 1:
            raise ValueError(
                f"fastv_k={k} is outside 1..{n - 1} for a model with {n} decoder layers "
                "(layers 0..k-1 see every image token; the ranking uses layer k-1's attention)"
            )
        if k > split:
            raise ValueError(
                f"fastv_k={k} is after split={split}: FastV composed with DPVR prunes in the shallow stack, "
                f"so use fastv_k <= {split}"
            )

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "DPVRConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown DPVRConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "DPVRConfig":
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_json_file(cls, path: str | Path) -> "DPVRConfig":
        return cls.from_json(Path(path).read_text())


@dataclass(frozen=True)
class ResolvedPlan:
    """A config resolved against a backbone: one mode per decoder layer."""

    num_layers: int
    split: int
    modes: list[str]
    fusion_layers: list[int]
    side_depth: int  # 0 without a side branch (nothing routed, fastv, vtw)
    prune_layer: int | None = None  # FastV's k: layers >= k see only the kept image tokens
    keep_ratio: float | None = None  # FastV's R: share of each sample's image tokens kept

    @property
    def routed(self) -> bool:
        """Whether the engine drives the layers (anything but a plain full pass over every layer)."""
        return self.side_depth > 0 or self.prune_layer is not None or any(m != "full" for m in self.modes)

    @property
    def deep_layers(self) -> list[int]:
        return list(range(self.split, self.num_layers))

    def layers_with_mode(self, mode: str) -> list[int]:
        return [i for i, m in enumerate(self.modes) if m == mode]
