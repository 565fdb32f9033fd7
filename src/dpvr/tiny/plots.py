"""Loss curves of a build (``losses.jsonl`` -> PNG), one panel per stage."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path


def plot_losses(jsonl: str | os.PathLike, png: str | os.PathLike, smooth: int = 20) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(jsonl).read_text().splitlines() if line.strip()]
    stages = list(dict.fromkeys(r["stage"] for r in rows)) or ["(none)"]
    ncols = min(len(stages), 4)
    nrows = -(-len(stages) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    for ax in axes.flat[len(stages):]:
        ax.set_visible(False)
    for ax, st in zip(axes.flat, stages):
        rs = [r for r in rows if r["stage"] == st]
        x = [r["step"] for r in rs]
        y = [r["loss"] for r in rs]
        ax.plot(x, y, lw=0.6, alpha=0.4, color="C0")
        if len(y) > smooth:
            ys = [sum(y[max(0, i - smooth + 1): i + 1]) / len(y[max(0, i - smooth + 1): i + 1]) for i in range(len(y))]
            ax.plot(x, ys, lw=1.5, color="C0")
        ax.set_title(_title(st))
        ax.ticklabel_format(useOffset=False)  # plain values: 0.4444, not 1e-6+4.444e-1
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = Path(png).with_name(f".{Path(png).name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, png)


def _title(stage: str) -> str:
    """Panel title: the stage's letter in ``dpvr tiny build``'s order, then what it trains."""
    fixed = {"clip": "(a) CLIP contrastive", "align": "(b) align on captions", "instruct": "(c) instruction tuning"}
    if stage in fixed:
        return fixed[stage]
    if stage.startswith("focus_"):
        return "(d) focus: " + stage.removeprefix("focus_")
    numbered = re.fullmatch(r"r(\d+)_(.+)", stage)  # a later focus round: r2_spatial
    if numbered:
        return f"(d) focus, round {numbered[1]}: {numbered[2]}"
    return stage
