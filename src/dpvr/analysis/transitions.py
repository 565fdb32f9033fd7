"""Transition layers of the saturation curves and the suggested split, with the reasons.

A curve's **transition layer** is the first layer at which it has completed ``share`` (default
90 %) of its change:

- rising curves (adjacent-layer cosine, which approaches 1 as a layer stops changing the
  hidden state): from its value at layer 0 to its maximum;
- falling curves (logit-lens KL, which reaches 0 at the last layer): from layer 0 to its minimum;
- text→image attention **collapse**: from its peak to its lowest value after the peak, provided
  that value is at most half the peak (``min_drop``); otherwise the attention has not collapsed.

The split follows the paper's reading of the three views (§3.1): route where text→image
attention has already collapsed and the image states have saturated, but before the vision
logit-lens transition (the image positions' prediction transition has not yet happened). The
window is ``[max(attention collapse, vision cosine transition), vision KL transition]``; the
suggestion is its first layer (the largest saving), kept in the deep half of the stack
(``min_split``, default ``ceil(N/2)``: splitting shallower leaves the side branch image states
that have not abstracted enough) and below the last ``K`` fusion layers (at least one
text-only layer, else routing saves nothing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: statistic key -> (curve kind, human name)
CURVES: dict[str, tuple[str, str]] = {
    "cosine_image": ("rise", "vision adjacent-layer cosine"),
    "cosine_text": ("rise", "text adjacent-layer cosine"),
    "kl_image": ("fall", "vision logit-lens KL"),
    "kl_text": ("fall", "text logit-lens KL"),
    "attn_text_to_image": ("collapse", "text→image attention mass"),
}


def _clean(values: Sequence[float | None]) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]


def transition_layer(values: Sequence[float | None], kind: str, share: float = 0.9,
                     min_drop: float = 0.5) -> dict:
    """Where a per-layer curve has completed ``share`` of its change (see module docstring).

    For ``kind="collapse"`` the fall after the peak must be at least ``min_drop`` of the peak
    value (default: at least halved) to count as a collapse; a curve that only wiggles has none.

    Returns a dict with ``layer`` (``None`` if the curve has no finite values), ``from`` (the
    start value and layer), ``to`` (the end value and layer), ``threshold`` and ``kind``.
    """
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share must be in (0, 1], got {share}")
    if kind not in ("rise", "fall", "collapse"):
        raise ValueError(f"unknown curve kind {kind!r}; expected rise, fall or collapse")
    v = _clean(values)
    finite = [i for i, x in enumerate(v) if not math.isnan(x)]
    out = {"kind": kind, "share": share, "layer": None, "threshold": None,
           "start_layer": None, "start": None, "end_layer": None, "end": None}
    if not finite:
        return out
    if kind == "collapse":
        start = max(finite, key=lambda i: v[i])  # peak
        after = [i for i in finite if i >= start]
        end = min(after, key=lambda i: v[i])
    else:
        start = finite[0]
        pick = max if kind == "rise" else min
        end = pick(finite, key=lambda i: v[i])
    a, b = v[start], v[end]
    if end == start or a == b:
        # no change in the expected direction (e.g. attention peaks at the last layer): no transition
        if kind == "rise":
            note = f"it is highest at layer {start} ({a:.3f}) and never rises above that"
        elif kind == "fall":
            note = f"it is lowest at layer {start} ({a:.3g}) and never falls below that"
        else:
            note = f"it peaks at the last layer ({a:.3f})"
        out.update(start_layer=int(start), start=a, end_layer=int(end), end=b, note=note)
        return out
    if kind == "collapse" and a > 0 and (a - b) < min_drop * a:
        out.update(start_layer=int(start), start=a, end_layer=int(end), end=b,
                   note=f"it falls only {(a - b) / a:.0%} below its peak; a collapse needs {min_drop:.0%}")
        return out
    threshold = a + share * (b - a)
    if kind == "rise":
        layer = next(i for i in finite if i >= start and v[i] >= threshold)
    else:
        layer = next(i for i in finite if i >= start and v[i] <= threshold)
    out.update(layer=int(layer), threshold=threshold, start_layer=int(start), start=a,
               end_layer=int(end), end=b)
    return out


def detect_transitions(means: dict[str, Sequence[float | None]], share: float = 0.9,
                       collapse_min_drop: float = 0.5) -> dict[str, dict]:
    """Transition of every known curve present in ``means`` ({statistic: per-layer means})."""
    return {key: transition_layer(means[key], kind, share, collapse_min_drop) | {"name": name}
            for key, (kind, name) in CURVES.items() if key in means}


def split_bounds(num_layers: int, num_fusion_layers: int = 1, min_split: int | None = None) -> tuple[int, int]:
    """Allowed split range ``[lo, hi]``: the deep half, leaving at least one text-only layer."""
    hi = num_layers - num_fusion_layers - 1
    lo = math.ceil(num_layers / 2) if min_split is None else int(min_split)
    if hi < 1:
        raise ValueError(f"a {num_layers}-layer model with {num_fusion_layers} fusion layer(s) leaves no "
                         "layer to route; need num_layers >= num_fusion_layers + 2")
    if not 1 <= lo <= num_layers - 1:
        raise ValueError(f"min_split must be in 1..{num_layers - 1}, got {lo}")
    return min(lo, hi), hi


def suggest_split(
    transitions: dict[str, dict],
    num_layers: int,
    num_fusion_layers: int = 1,
    min_split: int | None = None,
) -> tuple[int, str, dict]:
    """The suggested split ``s``, a one-paragraph explanation, and the numbers behind it."""
    lo_allowed, hi_allowed = split_bounds(num_layers, num_fusion_layers, min_split)

    def layer(key):
        t = transitions.get(key) or {}
        return t.get("layer")

    t_cos, t_attn, t_kl = layer("cosine_image"), layer("attn_text_to_image"), layer("kl_image")
    evidence = [t for t in (t_cos, t_attn) if t is not None]
    window_lo = max(evidence) if evidence else None
    window_hi = t_kl
    notes = []
    if window_lo is None and window_hi is None:
        raw = lo_allowed
        notes.append("No vision curve had finite values, so the split falls back to the first layer "
                     "of the deep half.")
    elif window_lo is None:
        raw = window_hi
    elif window_hi is not None and window_lo > window_hi:
        raw = window_lo
        notes.append(f"The window is empty (saturation evidence at layer {window_lo} comes after the "
                     f"vision logit-lens transition at layer {window_hi}); the later bound is taken, "
                     "which routes less and is the safer choice.")
    else:
        raw = window_lo
    split = min(max(raw, lo_allowed), hi_allowed)
    if split != raw:
        side = "raised to the deep-half minimum" if split > raw else "lowered to the maximum"
        notes.append(f"The curves point at layer {raw}; it was {side} {split} (allowed {lo_allowed}–"
                     f"{hi_allowed} for {num_layers} layers and K={num_fusion_layers}: the deep half, with at "
                     "least one text-only layer before the fusion layers).")

    def describe(key, fmt):
        t = transitions.get(key) or {}
        if t.get("layer") is None:
            return None
        try:
            return fmt.format(**t)
        except (KeyError, TypeError, ValueError):  # partial transition records (e.g. hand-made)
            return f"The {t.get('name', key)} transition is at layer {t['layer']}."

    share = next((t["share"] for t in transitions.values() if t.get("share") is not None), 0.9)
    pct = f"{share:.0%}"
    last_text = num_layers - num_fusion_layers - 1
    fuse = (f"layer {num_layers - 1} fuses" if num_fusion_layers == 1
            else f"layers {num_layers - num_fusion_layers}–{num_layers - 1} fuse")
    parts = [f"Suggested split s={split} of {num_layers} layers: layers 0–{split - 1} stay shared, "
             + (f"layer {split} runs" if split == last_text else f"layers {split}–{last_text} run")
             + f" text-only and {fuse} image and text again (K={num_fusion_layers})."]
    d = describe("cosine_image", "Image hidden states saturate at layer {layer}: the adjacent-layer cosine at "
                 "image positions has completed " + pct + " of its rise there ({start:.3f} at layer "
                 "{start_layer} → {end:.3f} at layer {end_layer}).")
    if d:
        parts.append(d)
    d = describe("attn_text_to_image", "Text→image attention has collapsed by layer {layer} (head-mean mass "
                 "{start:.3f} at its peak, layer {start_layer}, falling " + pct + " of the way to "
                 "{end:.3f} at layer {end_layer}).")
    if d:
        parts.append(d)
    d = describe("kl_image", "The vision logit-lens transition (KL to the final prediction down by " + pct +
                 ") is at layer {layer}")
    if d:
        reached = [what for t, what in ((t_attn, "text→image attention has collapsed"),
                                        (t_cos, "image states have saturated")) if t is not None and split >= t]
        if split <= t_kl:
            where = f"where {' and '.join(reached)} but " if reached else ""
            d += f", so the split sits {where}before the vision prediction transition."
        else:
            d += f"; the split lies past it (s={split})."
        parts.append(d)
    t_kl_text = layer("kl_text")
    if t_kl_text is not None:
        if t_kl is not None and t_kl_text > t_kl:
            parts.append(f"Text positions reach their logit-lens transition later, at layer {t_kl_text}: "
                         "text still needs the deep stack.")
        else:
            parts.append(f"Text positions reach their logit-lens transition at layer {t_kl_text}.")
    for key in ("cosine_image", "attn_text_to_image", "kl_image"):
        t = transitions.get(key) or {}
        if t.get("layer") is None and t.get("start_layer") is not None:
            parts.append(f"The {t.get('name', key)} shows no transition ({t.get('note', 'no finite values')}).")
    parts.extend(notes)
    details = {"window": [window_lo, window_hi], "raw": raw, "allowed": [lo_allowed, hi_allowed],
               "num_fusion_layers": num_fusion_layers}
    return split, " ".join(parts), details
