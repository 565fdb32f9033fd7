"""The methods a benchmark compares, and which positions each decoder layer computes under each.

A method is a name plus its settings (:class:`Method`). Its effect on cost is a
:class:`Schedule`: for every decoder layer of the language model (and every side-branch layer),
the positions whose queries are computed, the positions it attends to (its keys, which it also
keeps in the KV cache), and the positions whose key/value projections it computes. Both the
analytic FLOPs model (:mod:`dpvr.efficiency.flops`) and the latency harness
(:mod:`dpvr.efficiency.latency`) read the same method list, so a new method (a peer such as
FastV or VTW, or a composition) is one more entry in :data:`METHODS` plus its schedule.

=========  ==================================================================================
vanilla    every layer: all positions
lf         DPVR-LF: shallow full; deep ``text`` except the fusion layers (``fuse``); side branch
pc         DPVR-PC: every deep layer ``fuse``; side branch
kv         DPVR-KV: every deep layer ``kv``; side branch
ideal      DPVR-LF-ideal: every deep layer ``text``; side branch
fastv      FastV (SPEC §6): from layer k on, keep ``ratio`` of the image tokens
vtw        VTW (SPEC §6): from layer k on, no image tokens
lf+fastv   DPVR-LF with FastV pruning in the shallow stack (layers k..s-1 see the kept image
           tokens, the side branch the kept prefix)
=========  ==================================================================================

``fastv`` and ``lf+fastv`` also take FastV's keep share in the name: ``fastv-50``, ``lf+fastv-25``
(per cent of the image tokens kept; plain names use ``fastv_ratio``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dpvr.config import DPVR_VARIANTS, PEER_VARIANTS, DPVRConfig

DPVR_METHODS = ("vanilla", *DPVR_VARIANTS)
PEER_METHODS = PEER_VARIANTS
COMPOSED_METHODS = ("lf+fastv",)
METHODS = DPVR_METHODS + PEER_METHODS + COMPOSED_METHODS

DESCRIPTIONS = {
    "vanilla": "unrouted LLaVA",
    "lf": "DPVR-LF (text-only deep layers, fusion in F)",
    "pc": "DPVR-PC (every deep layer fuses)",
    "kv": "DPVR-KV (deep layers read image K/V)",
    "ideal": "DPVR-LF-ideal (no fusion)",
    "fastv": "FastV (keep a share of image tokens after layer k)",
    "vtw": "VTW (drop all image tokens at layer k)",
    "lf+fastv": "DPVR-LF with FastV pruning in the shallow stack",
}


@dataclass(frozen=True)
class Method:
    """One method to benchmark: a name from :data:`METHODS` and its settings.

    ``dpvr`` holds the :class:`DPVRConfig` the engine runs it with (the peers are engine variants
    too); ``options`` the settings of a peer (``k`` and ``ratio`` for FastV, ``k`` for VTW), which
    its analytic schedule reads.
    """

    name: str
    dpvr: DPVRConfig | None = None
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in METHODS:
            raise ValueError(f"unknown method {self.name!r}: choose from {', '.join(METHODS)}")

    @property
    def label(self) -> str:
        if self.name == "lf+fastv":
            c = self.dpvr
            return f"lf+fastv-{round(100 * c.fastv_ratio)}(s={c.split},k={c.fastv_k},D={c.side_depth})"
        if self.is_peer:
            return f"{self.name}(" + ",".join(f"{k}={v}" for k, v in self.options.items()) + ")"
        if self.dpvr is not None and self.name != "vanilla":
            c = self.dpvr
            fusion = ""
            if self.name == "lf":
                fusion = f",F=[{','.join(map(str, c.fusion_layers))}]" if c.fusion_layers else f",K={c.num_fusion_layers or 1}"
            return f"{self.name}(s={c.split}{fusion},D={c.side_depth})"
        return self.name

    @property
    def is_peer(self) -> bool:
        return self.name in PEER_METHODS


def make_methods(
    names: list[str] | tuple[str, ...],
    num_layers: int,
    split: int,
    num_fusion_layers: int | None = None,
    fusion_layers: list[int] | None = None,
    side_depth: int = 1,
    fastv_k: int = 2,
    fastv_ratio: float = 0.5,
    vtw_k: int | None = None,
) -> list[Method]:
    """Build (and validate against the backbone) the listed methods; ``vanilla`` is always first.

    ``fastv-NN`` / ``lf+fastv-NN`` keep NN % of the image tokens (overriding ``fastv_ratio``)."""
    parsed = {n: parse_method_name(n) for n in dict.fromkeys(names)}
    ordered = ["vanilla"] + [n for n in parsed if n != "vanilla"]
    methods = []
    for full in ordered:
        name, share = parse_method_name(full)
        ratio = fastv_ratio if share is None else share
        if name == "lf+fastv":
            if not 1 <= fastv_k <= split:
                raise ValueError(f"lf+fastv: fastv k={fastv_k} must lie in 1..{split} (FastV prunes in the shallow "
                                 f"stack, before the split)")
            if not 0.0 <= ratio <= 1.0:
                raise ValueError(f"fastv ratio={ratio} must lie in [0, 1] (the share of image tokens kept)")
            m = Method("lf+fastv", DPVRConfig(variant="lf", split=split, side_depth=side_depth,
                                              num_fusion_layers=num_fusion_layers, fusion_layers=fusion_layers,
                                              fastv_k=fastv_k, fastv_ratio=ratio),
                       options={"k": fastv_k, "ratio": ratio})
        elif name == "vanilla":
            m = Method("vanilla", DPVRConfig(variant="vanilla"))
        elif name in DPVR_METHODS:
            fusion = {}
            if name == "lf":
                fusion = {"num_fusion_layers": num_fusion_layers, "fusion_layers": fusion_layers}
            m = Method(name, DPVRConfig(variant=name, split=split, side_depth=side_depth, **fusion))
        elif name == "fastv":
            if not 1 <= fastv_k < num_layers:
                raise ValueError(f"fastv k={fastv_k} must lie in 1..{num_layers - 1}")
            if not 0.0 <= ratio <= 1.0:
                raise ValueError(f"fastv ratio={ratio} must lie in [0, 1] (the share of image tokens kept)")
            m = Method("fastv", DPVRConfig(variant="fastv", fastv_k=fastv_k, fastv_ratio=ratio),
                       options={"k": fastv_k, "ratio": ratio})
        else:  # vtw
            k = split if vtw_k is None else vtw_k
            if not 1 <= k < num_layers:
                raise ValueError(f"vtw k={k} must lie in 1..{num_layers - 1}")
            m = Method("vtw", DPVRConfig(variant="vtw", split=k), options={"k": k})
        if m.dpvr is not None:
            m.dpvr.resolve(num_layers)  # raises the config's own clear errors now, not mid-benchmark
        methods.append(m)
    return methods


def parse_method_name(text: str) -> tuple[str, float | None]:
    """``"lf+fastv-50"`` -> ``("lf+fastv", 0.5)``; ``"lf"`` -> ``("lf", None)``. Raises ``ValueError``
    naming the known methods for anything else."""
    name, _, share = text.partition("-") if text.startswith(("fastv-", "lf+fastv-")) else (text, "", "")
    if name not in METHODS or (share and not share.isdigit()) or (share and int(share) > 100):
        raise ValueError(f"unknown method {text!r}: choose from {', '.join(METHODS)} "
                         "(fastv and lf+fastv also as fastv-NN / lf+fastv-NN, NN = per cent of image tokens kept)")
    return name, (int(share) / 100 if share else None)


# ---------------------------------------------------------------------------------------- schedules
@dataclass(frozen=True)
class LayerWork:
    """The positions one decoder layer computes, as boolean masks over the prompt.

    ``queries``: positions whose q projection, attention output, o projection and MLP run.
    ``keys``: positions attended to (and kept in that layer's KV cache).
    ``kv_proj``: positions whose k/v projections run in this layer.
    """

    queries: np.ndarray
    keys: np.ndarray
    kv_proj: np.ndarray

    def causal_pairs(self) -> int:
        """Query–key pairs with key position <= query position."""
        keys_up_to = np.cumsum(self.keys, dtype=np.int64)
        return int(keys_up_to[self.queries].sum())


@dataclass(frozen=True)
class Schedule:
    """Per-layer work of a method on one prompt: the language model's layers and the side branch."""

    layers: list[LayerWork]
    side: list[LayerWork]


def _kept_image_positions(is_image: np.ndarray, ratio: float) -> np.ndarray:
    """FastV's kept image tokens for the analytic count: ``round(ratio * I)`` of them, evenly spread
    (which ones are kept depends on attention at run time; the count is what matters for cost)."""
    image = np.flatnonzero(is_image)
    keep = int(round(ratio * len(image)))
    kept = np.zeros_like(is_image)
    if keep:
        kept[image[np.linspace(0, len(image) - 1, keep).round().astype(int)]] = True
    return kept


def schedule(method: Method, is_image: np.ndarray, num_layers: int) -> Schedule:
    """The :class:`Schedule` of ``method`` on a prompt whose image positions are ``is_image``."""
    is_image = np.asarray(is_image, dtype=bool)
    every = np.ones_like(is_image)
    text = ~is_image
    full = LayerWork(every, every, every)
    text_only = LayerWork(text, text, text)
    if not method.is_peer:
        plan = method.dpvr.resolve(num_layers)
        if plan.prune_layer is not None:  # FastV composed with routing: the plan's pruned views
            from dpvr.efficiency.plan import plan_schedule

            return plan_schedule(plan, is_image)
        by_mode = {"full": full, "fuse": full, "text": text_only, "kv": LayerWork(text, every, every)}
        layers = [by_mode[m] for m in plan.modes]
        side = []
        if plan.side_depth and is_image.any():
            # The side branch runs causally over the prefix up to and including the last image token.
            prefix = np.arange(len(is_image)) <= np.flatnonzero(is_image)[-1]
            side = [LayerWork(prefix, prefix, prefix)] * plan.side_depth
        return Schedule(layers, side)
    # Peers. FastV's ranking (one layer's attention scores for the last query) is not counted.
    k = method.options["k"]
    if method.name == "fastv":
        kept = text | _kept_image_positions(is_image, method.options["ratio"])
        late = LayerWork(kept, kept, kept)
    elif method.name == "vtw":
        late = text_only
    else:  # pragma: no cover - guarded by Method.__post_init__
        raise ValueError(method.name)
    return Schedule([full] * k + [late] * (num_layers - k), [])


def prompt_mask(system: int, image: int, text: int, num_images: int = 1) -> np.ndarray:
    """Image-position mask of a LLaVA prompt: ``system`` tokens, ``num_images`` blocks of ``image``
    tokens (back to back), then ``text`` tokens."""
    if min(system, image, text) < 0 or num_images < 0:
        raise ValueError("token counts must be >= 0")
    return np.array([False] * system + [True] * (image * num_images) + [False] * text, dtype=bool)
