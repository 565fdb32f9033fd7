"""The sweep's aggregate: mean ± std over seeds per grid point, as JSON, CSV, Markdown and plots."""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from pathlib import Path

from dpvr.io import write_json_atomic, write_text_atomic


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def aggregate(records: list[dict]) -> list[dict]:
    """One row per group (a grid point over its seeds)."""
    groups = defaultdict(list)
    for r in records:
        groups[r["group"]].append(r)
    rows = []
    for group, recs in groups.items():
        first = recs[0]
        families = sorted({k for r in recs for k in r["accuracy"]} - {"overall"}) + ["overall"]
        row = {"group": group, "variant": first["variant"], **first["settings"], "seeds": sorted(r["seed"] for r in recs),
               "trainable_parameters": first["trainable_parameters"], "flops_saving": first["flops_saving"]}
        for fam in families:
            row[f"{fam}_mean"], row[f"{fam}_std"] = _mean_std([r["accuracy"].get(fam) for r in recs])
        row["final_train_loss_mean"], row["final_train_loss_std"] = _mean_std([r["final_train_loss"] for r in recs])
        rows.append(row)
    return sorted(rows, key=lambda r: r["group"])


def to_markdown(rows: list[dict], reference: dict | None = None) -> str:
    if not rows:
        return "(no finished points)\n"
    fams = [k[: -len("_mean")] for k in rows[0] if k.endswith("_mean") and not k.startswith("final_train_loss")]
    head = ["point", "seeds"] + fams + ["trainable", "FLOPs saving", "final loss"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["group"], str(len(r["seeds"]))]
        cells += [f"{r[f'{f}_mean']:.1f} ± {r[f'{f}_std']:.1f}" for f in fams]
        cells += [f"{r['trainable_parameters']:,}", f"{100 * r['flops_saving']:.1f} %",
                  f"{r['final_train_loss_mean']:.3f} ± {r['final_train_loss_std']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if reference is not None:
        cells = ["vanilla (reference, untrained)", "–"] + [f"{reference[f]:.1f}" if f in reference else "–" for f in fams]
        lines.append("| " + " | ".join(cells + ["0", "0.0 %", "–"]) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k != "group", k))
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (json.dumps(v) if isinstance(v, list) else v) for k, v in r.items()})
    return buf.getvalue()


def plot(rows: list[dict], out: Path, suggested_split: int | None = None, reference: dict | None = None) -> list[Path]:
    """accuracy vs split / K / D (other axes at their most common value) and vs FLOPs saving."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for axis, label in (("split", "split layer s"), ("num_fusion_layers", "fusion layers K"), ("side_depth", "side depth D")):
        series = defaultdict(list)
        for r in rows:
            if axis in r:
                others = tuple((k, r.get(k)) for k in ("split", "num_fusion_layers", "side_depth", "lr", "fusion_layers",
                                                       "distill", "distill_kl_weight", "distill_feature_weight",
                                                       "warmup_ratio")
                               if k != axis and k in r)
                series[(r["variant"],) + others].append((r[axis], r["overall_mean"], r["overall_std"]))
        series = {k: sorted(v) for k, v in series.items() if len(v) > 1}
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for key, pts in series.items():
            xs, ys, es = zip(*pts)
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3,
                        label=", ".join([key[0]] + [f"{k}={v}" for k, v in key[1:]]))
        if axis == "split" and suggested_split is not None:
            ax.axvline(suggested_split, color="grey", ls="--", lw=1, label=f"suggested split {suggested_split}")
        _reference_line(ax, reference)
        ax.set_xticks(sorted({x for pts in series.values() for x, _, _ in pts}))  # integer axes
        ax.set_xlabel(label)
        ax.set_ylabel("overall accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
        fig.tight_layout()
        path = out / f"accuracy_vs_{axis}.png"
        _save(fig, path)
        written.append(path)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for r in rows:
        ax.errorbar(100 * r["flops_saving"], r["overall_mean"], yerr=r["overall_std"], marker="o", capsize=3)
        ax.annotate(r["group"].replace("_", " "), (100 * r["flops_saving"], r["overall_mean"]), fontsize=5)
    if _reference_line(ax, reference):
        ax.legend(fontsize=6)
    ax.set_xlabel("analytic LM prefill FLOPs saving (%)")
    ax.set_ylabel("overall accuracy (%)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "accuracy_vs_flops.png"
    _save(fig, path)
    written.append(path)
    return written


def _reference_line(ax, reference: dict | None) -> bool:
    if reference is None or "overall" not in reference:
        return False
    ax.axhline(reference["overall"], color="black", ls=":", lw=1, label=f"vanilla {reference['overall']:.1f}")
    return True


def _save(fig, path: Path) -> None:
    import os

    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def write_report(records: list[dict], out: str | Path, suggested_split: int | None = None,
                 reference: dict | None = None) -> dict:
    """Write table.{json,csv,md} and the plots; ``reference``: the base model's accuracy per family."""
    out = Path(out)
    rows = aggregate(records)
    write_json_atomic(out / "table.json", {"rows": rows, "points": records, "suggested_split": suggested_split,
                                           "reference": reference})
    write_text_atomic(out / "table.csv", to_csv(rows))
    md = to_markdown(rows, reference)
    write_text_atomic(out / "table.md", md)
    plots = plot(rows, out, suggested_split, reference) if rows else []
    return {"rows": rows, "markdown": md, "plots": [str(p) for p in plots]}
