"""Figures of the efficiency reports (matplotlib, Agg backend); each is written atomically beside its JSON.

``plot_flops``: analytic prefill saving (LM and whole model) and KV-cache ratio against text length.
``plot_latency``: measured prefill and decode latency against text length per method, and measured
vs analytic ratios (prefill, decode, KV cache) against the diagonal.
``plot_train``: training-step time and peak memory per method.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dpvr.efficiency.report import save_figure_atomic  # noqa: E402


def _by_label(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["label"], []).append(r)
    return out


def plot_flops(report: dict, path: str | Path) -> Path:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (label, rows) in enumerate(_by_label(report["rows"]).items()):
        if rows[0]["method"] == "vanilla":
            continue
        xs = [r["text_tokens"] for r in rows]
        color = f"C{i}"
        ax1.plot(xs, [100 * r["saving_lm"] for r in rows], "o-", color=color, label=f"{label} (LM)")
        ax1.plot(xs, [100 * r["saving_whole"] for r in rows], "x--", color=color, alpha=0.6)
        ax2.plot(xs, [r["kv_cache_bytes_ratio"] for r in rows], "o-", color=color, label=label)
    ax1.axhline(0, color="grey", lw=0.5)
    ax1.set(xlabel="text tokens", ylabel="prefill FLOP saving vs vanilla (%)",
            title=f"{report['shape']['name']}: analytic prefill saving (solid LM, dashed whole)")
    ax2.set(xlabel="text tokens", ylabel="KV-cache bytes / vanilla", title="KV cache after prefill")
    ticks = sorted({r["text_tokens"] for r in report["rows"]})
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=7)
    fig.tight_layout()
    out = save_figure_atomic(fig, path, dpi=120)
    plt.close(fig)
    return out


def plot_latency(report: dict, path: str | Path) -> Path:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    batches = sorted({r["batch"] for r in report["results"]})
    styles = ["-", "--", ":", "-."]
    labels = list(dict.fromkeys(r["label"] for r in report["results"]))
    for bi, batch in enumerate(batches):
        rows = [r for r in report["results"] if r["batch"] == batch]
        for li, (label, lrows) in enumerate(_by_label(rows).items()):
            xs = [r["text_tokens"] for r in lrows]
            kw = {"color": f"C{labels.index(label)}", "ls": styles[bi % 4], "marker": "o",
                  "label": f"{label} b={batch}" if len(batches) > 1 else label}
            axes[0].plot(xs, [1e3 * r["prefill_s"]["median"] for r in lrows], **kw)
            if lrows[0]["decode_s_per_token"]:
                axes[1].plot(xs, [1e3 * r["decode_s_per_token"]["median"] for r in lrows], **kw)
    markers = {"prefill": ("o", "prefill_whole_ratio"), "decode": ("^", "decode_per_token_ratio"),
               "kv_cache": ("s", "kv_cache_bytes_ratio")}
    lo, hi = 1.0, 1.0
    for r in report["results"]:
        if r["method"] == "vanilla" or "analytic" not in r:
            continue
        for key, (marker, akey) in markers.items():
            measured = r["ratios"].get(key)
            if measured is None:
                continue
            analytic = r["analytic"][akey]
            axes[2].scatter(analytic, measured, marker=marker, color=f"C{labels.index(r['label'])}", s=25)
            lo, hi = min(lo, analytic, measured), max(hi, analytic, measured)
    pad = 0.05 * (hi - lo + 1e-9)
    axes[2].plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", lw=0.8)
    for key, (marker, _) in markers.items():
        axes[2].scatter([], [], marker=marker, color="grey", label=key)
    machine = report["machine"].get("gpu") or report["machine"].get("cpu_model", "cpu")
    axes[0].set(xlabel="text tokens", ylabel="prefill latency, median (ms)",
                title=f"{report['shape']} {report['settings']['dtype']} on {machine}"[:70])
    axes[1].set(xlabel="text tokens", ylabel="decode latency per token, median (ms)", title="cached decode")
    axes[2].set(xlabel="analytic ratio to vanilla", ylabel="measured ratio to vanilla (paired median)",
                title="measured vs analytic")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    out = save_figure_atomic(fig, path, dpi=120)
    plt.close(fig)
    return out


def plot_train(report: dict, path: str | Path) -> Path:
    rows = report["results"]
    labels = [r["label"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.bar(labels, [r["step_s"]["median"] for r in rows], color=[f"C{i}" for i in range(len(rows))],
            yerr=[[r["step_s"]["median"] - r["step_s"]["p25"] for r in rows],
                  [r["step_s"]["p75"] - r["step_s"]["median"] for r in rows]])
    ax1.set(ylabel="training step, median (s)", title=f"{report['shape']} {report['settings']['dtype']}")
    peaks = [(r["peak_step_bytes"] or 0) / 2**20 for r in rows]
    ax2.bar(labels, peaks, color=[f"C{i}" for i in range(len(rows))])
    ax2.set(ylabel="peak memory of a step (MiB)", title="peak step memory (method in JSON)")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=30, labelsize=8)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    out = save_figure_atomic(fig, path, dpi=120)
    plt.close(fig)
    return out
