"""Small shared pieces of the tiny-model build: image loading, LR schedule, loss logging."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dpvr.tiny.tokenizer import CLIP_MEAN, CLIP_STD


def load_pixels(root: str | os.PathLike, rels: list[str]) -> torch.Tensor:
    """Images ``root/rel`` as CLIP-normalised pixel values, (N, 3, H, W) float32.

    Same arithmetic as the shipped ``CLIPImageProcessor`` (rescale 1/255, then CLIP mean/std),
    done in one vectorised pass instead of per image.
    """
    root = Path(root)
    arr = np.stack([np.asarray(Image.open(root / r).convert("RGB"), dtype=np.uint8) for r in rels])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up to ``peak`` then cosine decay to 10 % of it."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


class LossLog:
    """Appends one JSON line per logged step to ``path`` (and keeps them in memory)."""

    def __init__(self, path: str | os.PathLike | None, stage: str):
        self.path = Path(path) if path else None
        self.stage = stage
        self.rows: list[dict] = []
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, **row) -> None:
        row = {"stage": self.stage, **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()}}
        self.rows.append(row)
        if self.path:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")
