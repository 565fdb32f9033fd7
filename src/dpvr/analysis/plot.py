"""The saturation figure: three panels (cosine, text→image attention, logit-lens KL), vision vs text.

Regenerate from a saved analysis without rerunning the model::

    python -m dpvr.analysis.plot runs/analyze/saturation.json   # writes saturation.png beside it
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from dpvr.io import write_bytes_atomic

VISION, TEXT, SPLIT = "#d62728", "#1f77b4", "black"


def _series(stat: dict):
    mean = [float("nan") if v is None else v for v in stat["mean"]]
    std = [0.0 if v is None else v for v in stat.get("std", [0.0] * len(mean))]
    return mean, std


def _curve(ax, layers, stat, color, label):
    import numpy as np

    mean, std = _series(stat)
    m, s = np.array(mean), np.array(std)
    ax.plot(layers, m, "-o", color=color, ms=3, lw=1.5, label=label)
    ax.fill_between(layers, m - s, m + s, color=color, alpha=0.15, lw=0)


def _mark(ax, transition: dict | None, color: str, label: str):
    if transition and transition.get("layer") is not None:
        ax.axvline(transition["layer"], color=color, ls=":", lw=1.3, label=f"{label} (layer {transition['layer']})")


def model_name(model) -> str:
    """A model as a title names it: no machine paths (the embedded default by name, a folder by its last part)."""
    if not model:
        return ""
    text = str(model)
    try:
        from dpvr import embedded

        if Path(text).resolve() == embedded.PATH.resolve():
            return "the embedded tiny LLaVA"
    except (ImportError, OSError):  # pragma: no cover
        pass
    if Path(text).is_absolute() or Path(text).exists():
        return Path(text).name
    return text  # a hub id (org/name)


def plot_saturation(data: dict, path: str | Path) -> Path:
    """Draw ``saturation.json``'s content into a PNG at ``path`` (written atomically)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    N = data["num_layers"]
    layers = list(range(N))
    st, tr = data["statistics"], data["transitions"]
    split = data["suggested_split"]
    K = data.get("split_details", {}).get("num_fusion_layers", 1)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3), constrained_layout=True)
    panels = [
        ("(a) adjacent-layer cosine  cos(h_l, h_{l+1})", "cosine_image", "cosine_text", "cosine"),
        ("(b) text→image attention mass (head mean)", None, "attn_text_to_image", "attention share"),
        ("(c) logit-lens KL to the final prediction", "kl_image", "kl_text", "KL (nats)"),
    ]
    for ax, (title, vis_key, txt_key, ylabel) in zip(axes, panels):
        ax.axvspan(split - 0.5, N - K - 0.5, color="0.9", zorder=0, label="text-only layers")
        ax.axvspan(N - K - 0.5, N - 0.5, color="#e8dff5", zorder=0, label="fusion layer(s)")
        if vis_key:
            _curve(ax, layers, st[vis_key], VISION, "vision (image positions)")
            _mark(ax, tr.get(vis_key), VISION, "vision transition")
        if txt_key == "attn_text_to_image":
            _curve(ax, layers, st[txt_key], TEXT, "text queries → image keys")
            _mark(ax, tr.get(txt_key), VISION, "attention collapse")
            mech = (data.get("mechanism") or {}).get("fusion_attention")
            if mech:
                pts = [(l, v) for l, v in zip(mech["layers"], mech["routed"]["mean"]) if v is not None]
                if pts:
                    ax.plot(*zip(*pts), "*", color="#2ca02c", ms=12, label="routed model (adapter), fusion layer")
            share = st.get("image_key_share", {}).get("mean")
            if share is not None:
                ax.axhline(share, color="0.4", ls="--", lw=1, label=f"uniform attention ({share:.2f})")
            ax.set_ylim(bottom=0)
        else:
            _curve(ax, layers, st[txt_key], TEXT, "text" + (" (answer positions)" if "kl" in txt_key else ""))
            _mark(ax, tr.get(txt_key), TEXT, "text transition")
        ax.axvline(split - 0.5, color=SPLIT, lw=2, label=f"suggested split s={split} (layers ≥ {split} routed)")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("decoder layer l")
        ax.set_ylabel(ylabel)
        ax.set_xlim(-0.5, N - 0.5)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    if any(v is not None and v > 0 for v in st["kl_image"]["mean"] + st["kl_text"]["mean"]):
        positive = [v for v in st["kl_image"]["mean"] + st["kl_text"]["mean"] if v is not None and v > 0]
        axes[2].set_yscale("symlog", linthresh=min(positive))
        axes[2].set_ylim(bottom=0)
    model = model_name(data.get("settings", {}).get("model", ""))
    n = data.get("samples", {}).get("used", "?")
    fig.suptitle(f"Saturation analysis{' of ' + str(model) if model else ''}: {n} samples, {N} layers, "
                 f"suggested split s={split}", fontsize=11)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=120)
    finally:
        plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())  # temp file with the usual mode, then a rename
    return path


if __name__ == "__main__":  # pragma: no cover
    import json

    src = Path(sys.argv[1])
    print(plot_saturation(json.loads(src.read_text()), src.with_suffix(".png")))
