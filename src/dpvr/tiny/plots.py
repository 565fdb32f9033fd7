"""Loss curves of a build (``losses.jsonl`` -> PNG), one panel per stage."""

from __future__ import annotations

import json
import os
from pathlib import Path


def plot_losses(jsonl: str | os.PathLike, png: str | os.PathLike, smooth: int = 20) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(jsonl).read_text().splitlines() if line.strip()]
    stages = list(dict.fromkeys(r["stage"] for r in rows))
    fig, axes = plt.subplots(1, max(1, len(stages)), figsize=(4.2 * max(1, len(stages)), 3.2), squeeze=False)
    for ax, st in zip(axes[0], stages):
        rs = [r for r in rows if r["stage"] == st]
        x = [r["step"] for r in rs]
        y = [r["loss"] for r in rs]
        ax.plot(x, y, lw=0.6, alpha=0.4, color="C0")
        if len(y) > smooth:
            ys = [sum(y[max(0, i - smooth + 1): i + 1]) / len(y[max(0, i - smooth + 1): i + 1]) for i in range(len(y))]
            ax.plot(x, ys, lw=1.5, color="C0")
        ax.set_title({"clip": "(a) CLIP contrastive", "align": "(b) align on captions",
                      "instruct": "(c) instruction tuning"}.get(st, st.replace("focus_", "(d) focus: ")))
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = Path(png).with_name(f".{Path(png).name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, png)
