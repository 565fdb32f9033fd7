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

from dpvr.io import write_json_atomic, write_text_atomic

BLIND = " [blind]"  # label suffix of a run with blank images
SECTIONS = ("overview", "saturation", "training", "results", "scatter", "efficiency", "reproduce")


def _methods_table(evaluation: dict, efficiency: dict) -> list[dict]:
    """One row per evaluated method: accuracy per family and overall, analytic FLOPs saving, latency ratio."""
    main = evaluation["methods"]
    flops = {r["method"]: r for r in efficiency["analytic_model"]["rows"]}
    flops_7b = {r["method"]: r for r in efficiency["analytic_7b"]["rows"]}
    latency = {}
    for r in efficiency["latency"].get("results", []):
        if r.get("batch") == 1:
            name = r.get("method") or r.get("label")
            latency[name] = r.get("ratios", {}).get("prefill")
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
        })
    return rows


def build_report(context: dict, analysis: dict, training: dict, evaluation: dict, efficiency: dict) -> dict:
    families = evaluation["methods"]["settings"]["families"]
    return {
        "title": "DPVR on the embedded tiny LLaVA",
        "context": context,
        "families": families,
        "chance": evaluation["methods"].get("chance", {}),
        "analysis": analysis,
        "training": {name: {k: t["summary"][k] for k in ("trainable_parameters", "global_steps", "eval_loss_before",
                                                         "eval_loss_after", "wall_seconds", "steps_per_second")}
                     | {"loss_png": t["loss_png"]} for name, t in training.items()},
        "methods": _methods_table(evaluation, efficiency),
        "analytic_model": efficiency["analytic_model"],
        "analytic_7b": efficiency["analytic_7b"],
        "latency": {"machine": efficiency["latency"].get("machine"), "timing_method": efficiency["latency"].get("timing_method"),
                    "results": [{k: r.get(k) for k in ("label", "batch", "text_tokens", "ratios", "analytic")}
                                for r in efficiency["latency"].get("results", [])]},
    }


# ----------------------------------------------------------------------------- rendering
def _fmt(v, pct: bool = False, digits: int = 1) -> str:
    if v is None:
        return "–"
    if pct:
        return f"{100 * v:.{digits}f} %"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


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
    """Accuracy vs analytic FLOPs saving, one point per method (blank-image runs left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dpvr.efficiency.report import save_figure_atomic

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in report["methods"]:
        if r["flops_saving"] is None or r["method"].endswith(BLIND):
            continue
        ax.scatter(100 * r["flops_saving"], r["overall"], s=30)
        ax.annotate(r["method"], (100 * r["flops_saving"], r["overall"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xlabel("analytic LM prefill FLOPs saving at this shape (%)")
    ax.set_ylabel("overall accuracy (%)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=120)
    plt.close(fig)
    return path


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
        "section{margin-bottom:2em}</style></head><body>",
        f"<h1>{html.escape(report['title'])}</h1>",
        '<section id="overview"><h2>Overview</h2>'
        f"<p>Split chosen by the saturation analysis: <b>s = {report['context']['split']}</b>. "
        "Methods trained on the same data with the same seed; accuracy is exact match on the held-out "
        "generated benchmark (greedy decoding); FLOPs savings are analytic (LM prefill); latency ratios are "
        "measured against vanilla in the same run.</p></section>",
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
                     _fmt(r["prefill_latency_ratio"], digits=3)] for r in report["methods"]], "results")
        + "<p>Chance: " + ", ".join(f"{html.escape(f)} {_fmt(c)}" for f, c in report["chance"].items()) + ".</p></section>",
        '<section id="scatter"><h2>Accuracy vs FLOPs</h2>' + _img(out / "accuracy_vs_flops.png", "accuracy vs FLOPs") + "</section>",
        '<section id="efficiency"><h2>Efficiency</h2>'
        + "".join(
            f"<h3>Analytic prefill FLOPs: {html.escape(t['shape'])} (split {t['split']}, "
            f"{t['rows'][0]['image_tokens']} image + {t['rows'][0]['system_tokens']} system + {t['rows'][0]['text_tokens']} text tokens)</h3>"
            + _table(["method", "LM GFLOP", "LM saving", "whole-model saving", "KV cache / vanilla"],
                     [[html.escape(r["method"]), _fmt(r["prefill_lm_flops"] / 1e9, digits=3), _fmt(r["lm_saving"], pct=True),
                       _fmt(r["whole_saving"], pct=True), _fmt(r["kv_cache_ratio"], digits=3)] for r in t["rows"]])
            for t in (report["analytic_model"], report["analytic_7b"]))
        + f"<h3>Measured at this shape ({html.escape(str(report['latency'].get('timing_method')))})</h3>"
        + _table(["method", "batch", "text tokens", "prefill / vanilla", "decode / vanilla", "analytic prefill"],
                 [[html.escape(str(r["label"])), str(r["batch"]), str(r["text_tokens"]), _fmt((r["ratios"] or {}).get("prefill"), digits=3),
                   _fmt((r["ratios"] or {}).get("decode"), digits=3), _fmt((r["analytic"] or {}).get("prefill_whole_ratio"), digits=3)]
                  for r in report["latency"]["results"]])
        + "</section>",
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
