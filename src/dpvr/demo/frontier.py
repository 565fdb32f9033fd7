"""The accuracy-vs-FLOPs frontier of the demo's methods: which ones no other method beats on both axes.

A method is on the (Pareto) front when no other method saves at least as many FLOPs with at least
the same accuracy and is strictly better on one of the two. The demo draws the front for two FLOP
counts of the same schedule: the tiny shape it ran, and the LLaVA-1.5-7B shape's analytic count.
"""

from __future__ import annotations

AXES = {"tiny": ("flops_saving", "this shape"), "7b": ("flops_saving_7b", "LLaVA-1.5-7B")}


def pareto_front(points: list[dict], x: str, y: str = "overall") -> list[dict]:
    """The points of ``points`` (dicts with numeric ``x`` and ``y``; others skipped) on the front, by rising ``x``."""
    usable = [p for p in points if p.get(x) is not None and p.get(y) is not None]

    def beaten(p):
        return any(q is not p and q[x] >= p[x] and q[y] >= p[y] and (q[x] > p[x] or q[y] > p[y]) for q in usable)

    return sorted((p for p in usable if not beaten(p)), key=lambda p: (p[x], -p[y]))


def frontier(methods: list[dict], exclude_suffix: str) -> dict:
    """Per FLOP count (``tiny``, ``7b``): the method names on the front, and one sentence that says so."""
    points = [m for m in methods if not m["method"].endswith(exclude_suffix)]
    out = {}
    for key, (field, shape) in AXES.items():
        names = [p["method"] for p in pareto_front(points, field)]
        out[key] = {"flops": field, "methods": names,
                    "sentence": f"At {shape}'s FLOPs, the front (no method both saves more and scores higher) is "
                                f"{', '.join(names) if names else 'empty'}."}
    return out
