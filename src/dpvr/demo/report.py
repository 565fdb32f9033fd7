"""The demo's report: ``report.json`` (every number) and ``report.html`` rendered from that same dict.

The HTML is one self-contained file: plots are embedded as base64 PNGs, there are no external
URLs, scripts or stylesheets. Every figure shown in it is formatted from ``report.json``'s values,
so the two cannot disagree.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from dpvr.demo.frontier import AXES, frontier, pareto_front
from dpvr.efficiency.noise import assess
from dpvr.io import write_json_atomic, write_text_atomic

BLIND = " [blind]"  # label suffix of a run with blank images
SECTIONS = ("overview", "saturation", "training", "results", "scatter", "efficiency", "timings", "reproduce")


def _methods_table(evaluation: dict, efficiency: dict) -> list[dict]:
    """One row per evaluated method: accuracy per family and overall, analytic FLOPs saving, latency ratio."""
    main = evaluation["methods"]
    flops = {r["method"]: r for r in efficiency["analytic_model"]["rows"]}
    flops_7b = {r["method"]: r for r in efficiency["analytic_7b"]["rows"]}
    latency, spread = {}, {}
    for r in efficiency["latency"].get("results", []):
        if r.get("batch") == 1:
            name = r.get("method") or r.get("label")
            latency[name] = r.get("ratios", {}).get("prefill")
            spread[name] = r.get("ratios", {}).get("prefill_p25_p75")
    families = main["settings"]["families"]
    rows = []
    blind = {(k if k.endswith(BLIND) else k + BLIND): v for k, v in evaluation["blind"]["methods"].items()}
    for label, m in list(main["methods"].items()) + list(blind.items()):
        key = label.removesuffix(BLIND)
        f = flops.get(key, {})
        rows.append({
            "method": label,
            "overall": m["overall"]["accuracy"],
            **{fam: m["families"][fam]["accuracy"] for fam in families if fam in m["families"]},
            "flops_saving": f.get("lm_saving"),
            "flops_saving_7b": flops_7b.get(key, {}).get("lm_saving"),
            "prefill_latency_ratio": latency.get(key),
            "prefill_latency_p25_p75": spread.get(key),
        })
    return rows


def build_report(context: dict, analysis: dict, training: dict, evaluation: dict, efficiency: dict) -> dict:
    families = evaluation["methods"]["settings"]["families"]
    methods = _methods_table(evaluation, efficiency)
    return {
        "title": "DPVR on the embedded tiny LLaVA",
        "context": context,
        "families": families,
        "chance": evaluation["methods"].get("chance", {}),
        "analysis": analysis,
        "training": {name: {k: t["summary"][k] for k in ("trainable_parameters", "global_steps", "eval_loss_before",
                                                         "eval_loss_after", "wall_seconds", "steps_per_second")}
                     | {"loss_png": t["loss_png"]} for name, t in training.items()},
        "methods": methods,
        "frontier": frontier(methods, BLIND),
        "analytic_model": efficiency["analytic_model"],
        "analytic_7b": efficiency["analytic_7b"],
        "latency": {"machine": efficiency["latency"].get("machine"), "timing_method": efficiency["latency"].get("timing_method"),
                    "repeats": efficiency["latency"].get("settings", {}).get("repeats"),
                    "warmup": efficiency["latency"].get("settings", {}).get("warmup"),
                    "load": efficiency["latency"].get("load"),
                    "noise": assess(efficiency["latency"]),
                    "results": [{k: r.get(k) for k in ("label", "batch", "text_tokens", "ratios", "analytic")}
                                for r in efficiency["latency"].get("results", [])]},
        "sample": _sample(context, evaluation),
        "timings": context.get("timings"),
    }


def _sample(context: dict, evaluation: dict) -> dict:
    """How much data stands behind the numbers; ``smoke_test`` for --quick (not results to quote)."""
    settings = context.get("settings", {})
    per_family = evaluation["methods"]["settings"].get("num_records") or {}
    n = min(per_family.values()) if per_family else settings.get("eval_limit")
    return {"smoke_test": bool(settings.get("quick")), "questions_per_family": n,
            "accuracy_step_points": round(100 / n, 1) if n else None,
            "train_steps": settings.get("train_steps"), "analysis_samples": settings.get("analysis_samples"),
            "latency_rounds": settings.get("latency_repeats")}


# ----------------------------------------------------------------------------- rendering
def _fmt(v, pct: bool = False, digits: int = 1) -> str:
    if v is None:
        return "–"
    if pct:
        return f"{100 * v:.{digits}f} %"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def _ratio(v, quartiles, digits: int = 2) -> str:
    """A measured ratio with its interquartile range over the timed rounds: ``1.13 (1.10–1.20)``."""
    if v is None:
        return "–"
    if not quartiles or None in quartiles:
        return f"{v:.{digits}f}"
    return f"{v:.{digits}f} <small>({quartiles[0]:.{digits}f}–{quartiles[1]:.{digits}f})</small>"


def _banners(report: dict) -> str:
    """The smoke-test note (--quick) and the noisy-latency warning, shown at the top of the report."""
    out = []
    sample = report.get("sample") or {}
    if sample.get("smoke_test"):
        out.append(
            '<div class="smoke" id="smoke-test"><b>Smoke-test numbers (dpvr demo --quick), not results.</b> '
            f"{sample.get('questions_per_family')} questions per benchmark family (accuracy moves in steps of "
            f"{_fmt(sample.get('accuracy_step_points'))} points), {sample.get('train_steps')} training steps per "
            f"method, {sample.get('analysis_samples')} analysis samples, {sample.get('latency_rounds')} timed latency "
            "rounds. Run <code>dpvr demo</code> without --quick for numbers to read.</div>")
    noise = (report.get("latency") or {}).get("noise") or {}
    if noise.get("noisy"):
        out.append('<div class="warn" id="noisy-latency"><b>&#9888; Latency ratios too noisy to read.</b> '
                   + " ".join(html.escape(r) + "." for r in noise.get("reasons", []))
                   + " Rerun on an idle machine (<code>dpvr demo</code> reuses every other stage: delete "
                     "OUT/efficiency first) before quoting any latency figure.</div>")
    return "".join(out)


def _img(path: str | Path, alt: str) -> str:
    p = Path(path)
    if not p.is_file():
        return f"<p><em>{html.escape(alt)}: no image</em></p>"
    data = base64.b64encode(p.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    out = [f'<table class="{cls}"><thead><tr>' + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def scatter_png(report: dict, path: Path) -> Path:
    """Accuracy vs analytic FLOPs saving, one point per method (blank-image runs left out), at the tiny shape and
    at LLaVA-1.5-7B's shape (same schedule), each with its Pareto front drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dpvr.efficiency.report import save_figure_atomic

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    markers = "osD^v<>PXh*"
    points = [r for r in report["methods"] if not r["method"].endswith(BLIND)]
    style = {r["method"]: (markers[i % len(markers)], f"C{i % 10}") for i, r in enumerate(points)}
    for ax, (field, shape) in zip(axes, AXES.values()):
        for r in points:  # one marker and colour per method, named in the legend: labels cannot collide
            if r.get(field) is None:
                continue
            marker, color = style[r["method"]]
            ax.scatter(100 * r[field], r["overall"], s=36, marker=marker, color=color, label=r["method"], alpha=0.85,
                       edgecolors="black", linewidths=0.4, zorder=3)
        front = pareto_front(points, field)
        ax.step([100 * p[field] for p in front], [p["overall"] for p in front], where="pre", color="0.3",
                linestyle="--", linewidth=1, zorder=2, label="Pareto front")
        ax.set_xlabel(f"analytic LM prefill FLOPs saving, {shape} (%)")
        ax.ticklabel_format(useOffset=False)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("overall accuracy (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    axes[1].legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    if (report.get("sample") or {}).get("smoke_test"):
        fig.suptitle(f"smoke test: {report['sample'].get('questions_per_family')} questions per family", fontsize=9)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=120)
    plt.close(fig)
    return path


def _rounds_note(latency: dict) -> str:
    load = (latency.get("load") or {}).get("before")
    text = (f"{latency.get('warmup')} warm-up and {latency.get('repeats')} timed rounds, every method once per round "
            "in rotating order; ratios are medians of the per-round ratios to vanilla.")
    if load:
        text += f" Load average when it started: {load[0]:.1f} on {(latency.get('machine') or {}).get('cpu_count')} CPUs."
    return html.escape(text)


def _timings_table(timings: dict | None) -> str:
    if not timings:
        return "<p><em>no stage times recorded</em></p>"
    from dpvr.demo.timing import duration

    est = timings.get("estimated_seconds") or {}
    rows = [[html.escape(name), duration(t["seconds"]) if t.get("seconds") is not None else "–",
             "reused from an earlier run" if t.get("reused") else "this run", duration(est[name]) if name in est else "–"]
            for name, t in (timings.get("stages") or {}).items()]
    return (_table(["stage", "measured", "when", "estimate before the run"], rows)
            + f"<p>This run: {duration(timings.get('this_run_seconds') or 0)} in all. Estimates from stage times "
              f"measured on {html.escape(str(timings.get('estimates_measured_on')))}.</p>")


def render_html(report: dict, out: Path) -> str:
    fams = report["families"]
    ctx = report["context"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(report['title'])}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;"
        "text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
        "img{max-width:100%}code,pre{background:#f6f6f6;padding:2px 4px}pre{padding:8px;white-space:pre-wrap}"
        "section{margin-bottom:2em}.warn{background:#fff3cd;border:2px solid #c77c02;padding:8px 12px;margin:1em 0}"
        ".smoke{background:#e8f0fe;border:2px solid #3367d6;padding:8px 12px;margin:1em 0}"
        "small{color:#666}</style></head><body>",
        f"<h1>{html.escape(report['title'])}</h1>",
        _banners(report),
        '<section id="overview"><h2>Overview</h2>'
        f"<p>Split chosen by the saturation analysis: <b>s = {report['context']['split']}</b>. "
        "Methods trained on the same data with the same seed; accuracy is exact match on the held-out "
        "generated benchmark (greedy decoding); FLOPs savings are analytic (LM prefill); latency ratios are "
        "measured against vanilla in interleaved, warmed-up rounds of the same run (median, with the "
        "interquartile range over the rounds in brackets).</p></section>",
        '<section id="saturation"><h2>Saturation analysis</h2>'
        f"<p>{html.escape(report['analysis'].get('explanation', ''))}</p>"
        + _img(report["analysis"]["png"], "saturation curves") + "</section>",
        '<section id="training"><h2>Training</h2>'
        + _table(["method", "trainable parameters", "steps", "held-out loss before", "after", "seconds", "steps/s"],
                 [[html.escape(n), f"{t['trainable_parameters']:,}", str(t["global_steps"]), _fmt(t["eval_loss_before"], digits=3),
                   _fmt(t["eval_loss_after"], digits=3), _fmt(t["wall_seconds"]), _fmt(t["steps_per_second"], digits=2)]
                  for n, t in report["training"].items()])
        + "".join(f"<h3>{html.escape(n)}</h3>" + _img(t["loss_png"], f"loss curve {n}") for n, t in report["training"].items())
        + "</section>",
        '<section id="results"><h2>Accuracy, FLOPs and latency</h2>'
        + _table(["method", "overall"] + fams + ["FLOPs saving (this shape)", "FLOPs saving (LLaVA-1.5-7B)",
                                                  "prefill latency / vanilla"],
                 [[html.escape(r["method"]), _fmt(r["overall"])] + [_fmt(r.get(f)) for f in fams]
                  + [_fmt(r["flops_saving"], pct=True), _fmt(r["flops_saving_7b"], pct=True),
                     _ratio(r["prefill_latency_ratio"], r.get("prefill_latency_p25_p75"))]
                  for r in report["methods"]], "results")
        + "<p>Chance: " + ", ".join(f"{html.escape(f)} {_fmt(c)}" for f, c in report["chance"].items()) + ".</p></section>",
        '<section id="scatter"><h2>Accuracy vs FLOPs</h2>' + _img(out / "accuracy_vs_flops.png", "accuracy vs FLOPs")
        + "".join(f'<p class="frontier">{html.escape(f["sentence"])}</p>' for f in report.get("frontier", {}).values())
        + "</section>",
        '<section id="efficiency"><h2>Efficiency</h2>'
        + "".join(
            f"<h3>Analytic prefill FLOPs: {html.escape(t['shape'])} (split {t['split']}, "
            f"{t['rows'][0]['image_tokens']} image + {t['rows'][0]['system_tokens']} system + {t['rows'][0]['text_tokens']} text tokens)</h3>"
            + _table(["method", "LM GFLOP", "LM saving", "whole-model saving", "KV cache / vanilla"],
                     [[html.escape(r["method"]), _fmt(r["prefill_lm_flops"] / 1e9, digits=3), _fmt(r["lm_saving"], pct=True),
                       _fmt(r["whole_saving"], pct=True), _fmt(r["kv_cache_ratio"], digits=3)] for r in t["rows"]])
            for t in (report["analytic_model"], report["analytic_7b"]))
        + f"<h3>Measured at this shape ({html.escape(str(report['latency'].get('timing_method')))})</h3>"
        + f"<p>{_rounds_note(report['latency'])}</p>"
        + _banners({"latency": report["latency"]})
        + _table(["method", "batch", "text tokens", "prefill / vanilla (IQR)", "decode / vanilla (IQR)", "analytic prefill"],
                 [[html.escape(str(r["label"])), str(r["batch"]), str(r["text_tokens"]),
                   _ratio((r["ratios"] or {}).get("prefill"), (r["ratios"] or {}).get("prefill_p25_p75")),
                   _ratio((r["ratios"] or {}).get("decode"), (r["ratios"] or {}).get("decode_p25_p75")),
                   _fmt((r["analytic"] or {}).get("prefill_whole_ratio"), digits=3)]
                  for r in report["latency"]["results"]])
        + "</section>",
        '<section id="timings"><h2>Stage times</h2>' + _timings_table(report.get("timings")) + "</section>",
        '<section id="reproduce"><h2>Reproduce</h2>'
        f"<pre>{html.escape(ctx['command'])}</pre>"
        f"<pre>{html.escape(json.dumps(ctx['settings'], indent=2))}</pre>"
        f"<pre>{html.escape(json.dumps(ctx['versions'], indent=2))}</pre></section>",
        "</body></html>",
    ]
    return "\n".join(parts)


def write_report(out: Path, context: dict, analysis: dict, training: dict, evaluation: dict, efficiency: dict) -> dict:
    report = build_report(context, analysis, training, evaluation, efficiency)
    scatter_png(report, out / "accuracy_vs_flops.png")
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.html", render_html(report, out))
    return report
