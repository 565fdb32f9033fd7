"""Resumable checkpoints: a completeness marker written last, the newest complete one found, the loss carried over.

The Trainer writes ``checkpoints/checkpoint-N/`` file by file; a kill mid-save leaves a partial
folder (weights without ``trainer_state.json``, a truncated optimizer). ``_Trainer`` (train/run.py)
writes ``dpvr_checkpoint.json`` after everything else: the files and their sizes, and the running
loss sum, so that a resumed run's ``train_loss`` and loss rows equal the uninterrupted run's.
``latest_complete`` skips partial folders; ``check_complete`` says what is missing in one line.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

from transformers import TrainerCallback

MARKER = "dpvr_checkpoint.json"
_STEP = re.compile(r"^checkpoint-(\d+)$")


def write_marker(folder: str | Path, loss_state: dict) -> None:
    from dpvr.io import write_json_atomic

    folder = Path(folder)
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file() and p.name != MARKER}
    write_json_atomic(folder / MARKER, {"files": files, "loss_state": loss_state})


def _problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be resumed from, or None."""
    if not folder.is_dir():
        return "it does not exist"
    marker = folder / MARKER
    if marker.is_file():
        try:
            files = json.loads(marker.read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return f"{MARKER} is unreadable"
        for name, size in files.items():
            path = folder / name
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != size:
                return f"{name} has {path.stat().st_size} bytes, {size} were written"
        return None
    # a checkpoint written before the marker existed: check what the Trainer needs
    try:
        json.loads((folder / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return "trainer_state.json is missing or unreadable"
    for name in ("optimizer.pt", "scheduler.pt"):
        path = folder / name
        if not path.is_file() or not zipfile.is_zipfile(path):
            return f"{name} is missing or truncated"
    return None


def check_complete(folder: str | Path) -> None:
    problem = _problem(Path(folder))
    if problem:
        raise ValueError(f"checkpoint {folder} is incomplete ({problem}; an interrupted save): pass an earlier "
                         "checkpoint, or --resume latest to take the newest complete one")


def latest_complete(folder: str | Path) -> str | None:
    """The newest checkpoint folder under ``folder`` that is complete (partial ones are skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    steps = sorted(((int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP.match(p.name)) and p.is_dir()),
                   reverse=True)
    for _, path in steps:
        if _problem(path) is None:
            return str(path)
    return None


def loss_state(trainer) -> dict:
    return {"total_loss_scalar": trainer._total_loss_scalar, "pending": float(trainer._tr_loss.item()),
            "globalstep_last_logged": trainer._globalstep_last_logged}


class RestoreLossState(TrainerCallback):
    """On resume, give the Trainer back the loss sum and the unlogged window of the checkpoint."""

    def __init__(self, trainer, state: dict | None):
        self.trainer, self.state = trainer, state

    def on_train_begin(self, args, state, control, **kwargs):
        if not self.state:
            return
        t = self.trainer
        t._total_loss_scalar = float(self.state["total_loss_scalar"])
        t._tr_loss += float(self.state["pending"])
        t._globalstep_last_logged = int(self.state["globalstep_last_logged"])


def read_loss_state(checkpoint: str | Path) -> dict | None:
    path = Path(checkpoint) / MARKER
    try:
        return json.loads(path.read_text()).get("loss_state")
    except (OSError, ValueError, AttributeError):
        return None


def finished_state(checkpoint: str | Path) -> dict | None:
    """The checkpoint's trainer state if it is the last step of its run (nothing left to train), else None."""
    try:
        state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return None
    steps, total = state.get("global_step"), state.get("max_steps")
    return state if isinstance(steps, int) and isinstance(total, int) and 0 < total <= steps else None


def loss_rows(log_history: list[dict]) -> list[dict]:
    """The training loss rows of ``loss.jsonl`` from the Trainer's log history (resumed runs included)."""
    return [{"stage": "train", "step": h["step"], "loss": h["loss"], "lr": h.get("learning_rate")}
            | {k: v for k, v in h.items() if k.startswith("distill_")}  # the distillation terms (--distill)
            for h in log_history if "loss" in h and "step" in h]


__all__ = ["MARKER", "write_marker", "check_complete", "latest_complete", "loss_state", "RestoreLossState",
           "read_loss_state", "finished_state", "loss_rows"]
