"""Grid specifications: ``split=4,5,6 num_fusion_layers=1,2 fusion_layers=[s+2,N-1];[N-2,N-1] distill=off,on``.

Each ``key=values`` gives one axis. Values are separated by commas, or by semicolons when a value
is itself a list (``fusion_layers``). Inside ``fusion_layers``, ``s`` is the point's split and
``N`` the number of layers, so a sparse fusion set can follow the split across the grid. Variants
and seeds are axes too (``--variants``, ``--seeds``). `expand_grid` returns the points in a fixed
order; each point has a stable name used for its output folder.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

from dpvr.validation import validate_grid

def _switch(text: str) -> bool:
    value = {"0": False, "off": False, "false": False, "no": False, "1": True, "on": True, "true": True,
             "yes": True}.get(text.lower())
    if value is None:
        raise ValueError(f"{text!r} is not on/off (use 0,1 or off,on)")
    return value


AXES = {
    "split": int,
    "num_fusion_layers": int,
    "side_depth": int,
    "lr": float,
    "fusion_layers": str,  # resolved per point: may use s and N
    "distill": _switch,  # dpvr train --distill (teacher targets shared through OUT/teacher-targets)
    "distill_kl_weight": float,
    "distill_feature_weight": float,
    "warmup_ratio": float,
}
SHORT = {"split": "s", "num_fusion_layers": "K", "side_depth": "D", "lr": "lr", "fusion_layers": "F",
         "variant": "v", "seed": "seed", "distill": "kd", "distill_kl_weight": "kdkl",
         "distill_feature_weight": "kdfeat", "warmup_ratio": "wu"}


@dataclass(frozen=True)
class Point:
    """One training run of the sweep."""

    variant: str
    seed: int
    settings: tuple = field(default_factory=tuple)  # sorted (axis, value) pairs

    @property
    def values(self) -> dict:
        return dict(self.settings)

    @property
    def group(self) -> str:
        """Name without the seed: points that differ only by seed aggregate together."""
        parts = [f"v={self.variant}"] + [f"{SHORT[k]}={_fmt(v)}" for k, v in self.settings]
        return "_".join(parts)

    @property
    def name(self) -> str:
        return f"{self.group}_seed={self.seed}"

    def resolved_fusion_layers(self, num_layers: int) -> list[int] | None:
        spec = self.values.get("fusion_layers")
        if spec is None:
            return None
        return resolve_layer_list(spec, split=self.values.get("split"), num_layers=num_layers)


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v).replace(" ", "")


def parse_grid(specs: list[str]) -> dict[str, list]:
    """``["split=4,5", "lr=1e-3"]`` -> ``{"split": [4, 5], "lr": [0.001]}`` with clear errors."""
    grid: dict[str, list] = {}
    for spec in specs:
        if "=" not in spec:
            raise ValueError(f"grid axis {spec!r} is not KEY=VALUES (e.g. split=4,5,6)")
        key, raw = spec.split("=", 1)
        key = key.strip()
        if key not in AXES:
            raise ValueError(f"unknown grid axis {key!r}: choose from {', '.join(AXES)} (variants and seeds have their own flags)")
        if key in grid:
            raise ValueError(f"grid axis {key!r} given twice")
        sep = ";" if (key == "fusion_layers" or "[" in raw) else ","
        items = [v.strip() for v in raw.split(sep) if v.strip()]
        if not items:
            raise ValueError(f"grid axis {key!r} has no values")
        try:
            values = [AXES[key](v) for v in items]
        except ValueError as err:
            raise ValueError(f"grid axis {key!r}: {err}") from err
        if key == "fusion_layers":
            for v in values:
                resolve_layer_list(v, split=1, num_layers=2, check_only=True)
        grid[key] = values
    return validate_grid(grid)


def expand_grid(grid: dict[str, list], variants: list[str], seeds: list[int]) -> list[Point]:
    keys = sorted(grid)
    points = []
    for variant in variants:
        for combo in itertools.product(*(grid[k] for k in keys)):
            settings = tuple(zip(keys, combo))
            for seed in seeds:
                points.append(Point(variant, seed, settings))
    return points


_TERM = re.compile(r"^\s*(s|N|\d+)\s*(?:([+-])\s*(\d+))?\s*$")


def resolve_layer_list(spec: str, split: int | None, num_layers: int, check_only: bool = False) -> list[int]:
    """``"[s+2,N-1]"`` -> layer indices for this split and depth."""
    body = spec.strip()
    if not (body.startswith("[") and body.endswith("]")):
        raise ValueError(f"fusion_layers value {spec!r} must be a bracketed list like [s+2,N-1] or [6,7]")
    out = []
    for term in body[1:-1].split(","):
        m = _TERM.match(term)
        if not m:
            raise ValueError(f"fusion_layers term {term!r} in {spec!r}: use integers, s (the split) or N (layers), "
                             "optionally +/- an integer")
        if check_only:
            continue
        base, op, num = m.groups()
        if base == "s" and split is None:
            raise ValueError(f"fusion_layers {spec!r} uses s but the grid has no split axis (give --split or split=...)")
        value = {"s": split, "N": num_layers}.get(base, None)
        value = int(base) if value is None else value
        if op:
            value = value + int(num) if op == "+" else value - int(num)
        out.append(value)
    return out
