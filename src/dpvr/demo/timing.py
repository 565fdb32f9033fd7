"""How long the demo's stages take: a small table of measured times, scaled to this machine as stages finish.

Each stage's time is modelled as ``fixed + per_unit * units`` (units: analysed samples, training
steps, evaluated questions, latency rounds). `MEASURED` holds the two numbers per stage kind,
fitted to stage times measured on `MEASURED_ON`; the demo prints the plan with these estimates
before it starts and, after each stage it runs, rescales what is left by how much slower or faster
this run's finished stages were than their estimates (`Estimator.speed`).
"""

from __future__ import annotations

# Fitted to the stage times (stage.json) of `dpvr demo` (seed 0, 8 min 32 s in all, idle) and of
# `dpvr demo --quick` on the same machine; the fixed parts come from --quick, the per-unit parts from
# the full run (e.g. train lf: 69 s for 300 steps, lora16: 154 s).
MEASURED_ON = "the project's 2-core AMD EPYC (torch 2.13 CPU)"
MEASURED = {
    # stage (or its kind, the first word): (fixed seconds, seconds per unit, unit)
    "analyze": (4.0, 0.35, "sample"),
    "train": (10.0, 0.20, "step"),  # the DPVR variants
    "train lora16": (10.0, 0.48, "step"),
    "evaluate": (10.0, 0.015, "question"),
    "efficiency": (3.0, 0.2, "run"),
}


def _entry(stage: str) -> tuple[float, float, str]:
    return MEASURED.get(stage) or MEASURED[kind(stage)]


def kind(stage: str) -> str:
    return stage.split()[0]


def estimate(stage: str, units: float) -> float:
    fixed, per_unit, _ = _entry(stage)
    return fixed + per_unit * units


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Estimator:
    """The plan's estimates, rescaled by the measured/estimated ratio of the stages this run has finished."""

    def __init__(self, plan: dict[str, float]):
        self.units = dict(plan)  # stage -> units
        self.base = {name: estimate(name, u) for name, u in plan.items()}
        self.measured: dict[str, float] = {}  # stages run now (reused ones say nothing about this machine)
        self.done: set[str] = set()

    @property
    def speed(self) -> float:
        """Measured / estimated seconds over the stages run so far in this process (1.0 before any)."""
        if not self.measured:
            return 1.0
        return sum(self.measured.values()) / max(1e-9, sum(self.base[n] for n in self.measured))

    def finish(self, name: str, seconds: float | None, reused: bool) -> None:
        self.done.add(name)
        if not reused and seconds is not None:
            self.measured[name] = seconds

    def remaining(self) -> float:
        return self.speed * sum(t for n, t in self.base.items() if n not in self.done)

    def header(self, reusable: set[str] = frozenset()) -> str:
        lines = [f"dpvr demo: {len(self.base)} stages; estimate from times measured on {MEASURED_ON} "
                 "(refreshed as stages finish):"]
        for name, t in self.base.items():
            unit = _entry(name)[2]
            note = f"~{duration(t)}" + (" (finished before: reused if its settings match)" if name in reusable else "")
            lines.append(f"  {name:<16} {self.units[name]:>6.0f} {unit + 's':<10} {note}")
        lines.append(f"  {'total':<16} {'':>6} {'':<10} ~{duration(sum(self.base.values()))}")
        return "\n".join(lines)
