"""Can a measured latency ratio be read? Its spread over the timed rounds, the rounds' number, the machine's load.

    from dpvr.efficiency.noise import assess
    verdict = assess(latency_report)      # {"noisy": bool, "reasons": [...], "rows": [...]}

Every ratio of `dpvr.efficiency.latency.measure_latency` and `dpvr.efficiency.decode.measure_decode` is
the median of paired per-round ratios (each method against vanilla in the same round; a compiled decode
step against its eager twin) with its quartiles. A ratio is flagged when:

- its interquartile range is wider than `MAX_RELATIVE_IQR` of the median (the rounds disagree:
  another process took the CPU in some of them, or the work is too short to time);
- it comes from fewer than `MIN_REPEATS` timed rounds (no spread to judge it by);
- with wall-clock timing, the machine's 1-minute load average during the measurement exceeded its
  CPU count (other processes competed for the cores; CPU-time timing counts only this process);
- a compiled entry compiled again inside a timed round (``compiles_while_timed``): its time includes
  the compiler's.
"""

from __future__ import annotations

MAX_RELATIVE_IQR = 0.20
MIN_REPEATS = 3


def relative_iqr(median: float | None, quartiles) -> float | None:
    if median in (None, 0) or not quartiles or None in quartiles:
        return None
    return (quartiles[1] - quartiles[0]) / abs(median)


def assess(report: dict) -> dict:
    """The verdict on a latency report: which ratios are too spread to read, and why."""
    settings = report.get("settings", {})
    repeats = settings.get("repeats")
    rows, reasons = [], []
    for r in report.get("results", []):
        for kind, median, quartiles in _ratios(r):
            spread = relative_iqr(median, quartiles)
            vanilla_itself = kind != "compiled/eager" and r.get("method", r.get("label")) == "vanilla"
            if spread is not None and spread > MAX_RELATIVE_IQR and not vanilla_itself:
                rows.append({"label": r.get("label"), "batch": r.get("batch"), "kind": kind, "relative_iqr": spread})
    if rows:
        worst = max(rows, key=lambda x: x["relative_iqr"])
        reasons.append(f"{len(rows)} ratio(s) vary by more than {MAX_RELATIVE_IQR:.0%} between rounds "
                       f"(widest: {worst['label']} {worst['kind']}, interquartile range {worst['relative_iqr']:.0%} "
                       "of its median)")
    if repeats is not None and repeats < MIN_REPEATS:
        reasons.append(f"only {repeats} timed round(s): no spread to judge the ratios by (use {MIN_REPEATS}+)")
    recompiled = [f"{r.get('label')} (batch {r.get('batch')})" for r in report.get("results", [])
                  if r.get("compiles_while_timed")]
    if recompiled:
        reasons.append(f"{len(recompiled)} compiled entr{'y' if len(recompiled) == 1 else 'ies'} compiled again inside "
                       f"timed rounds ({', '.join(recompiled[:3])}{', ...' if len(recompiled) > 3 else ''}): the "
                       "compiler's time is in their ratios (use more --warmup)")
    load = report.get("load") or {}
    cpus = (report.get("machine") or {}).get("cpu_count") or 0
    peak = max([(load.get(k) or [0])[0] for k in ("before", "after")] + [0])
    wall = "perf_counter" in str(report.get("timing_method", ""))
    if cpus and wall and peak > cpus:
        reasons.append(f"the machine's load average was {peak:.1f} on {cpus} CPUs during the measurement "
                       "(other processes competed for the cores)")
    return {"noisy": bool(reasons), "reasons": reasons, "rows": rows, "load_average": peak or None,
            "max_relative_iqr": MAX_RELATIVE_IQR}


def _ratios(row: dict):
    """(kind, median, [p25, p75]) of every ratio in a result row: a latency row's prefill/decode ratios, or a
    decode-bench row's ratio to vanilla and, for a compiled entry, its ratio to the eager twin."""
    ratios = row.get("ratios") or {}
    for kind in ("prefill", "decode"):
        yield kind, ratios.get(kind), ratios.get(f"{kind}_p25_p75")
    yield "decode", row.get("ratio_to_vanilla"), row.get("ratio_to_vanilla_p25_p75")
    yield "compiled/eager", row.get("compiled_over_eager"), row.get("compiled_over_eager_p25_p75")
