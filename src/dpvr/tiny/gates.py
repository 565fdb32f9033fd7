"""Validation gates of the build's focus curriculum: has a stage taken a family off the chance plateau?

A small model leaves the plateau of a family (POPE, spatial, multiple choice) only on some numerical
paths: one thread vs two, one CPU vs another. The build therefore checks instead of hoping: a gate
scores the model being built on held-out validation items — a benchmark generated with its own seed
into the build's work folder, never the test files — with the image and with a blank one, through
``dpvr eval``'s own scorer (:func:`dpvr.evaluation.accuracy_report`), and a family clears when its
accuracy is ``margin`` points above its blind accuracy.

    gate = Gate(processor, "work/val", items=100, margin=15.0)
    status = gate.check(model, ["pope", "mc"])      # {"passed", "families": {fam: {...}}}
"""

from __future__ import annotations

from pathlib import Path

from dpvr.data.questions import FAMILIES


class GateError(RuntimeError):
    """A build stage never cleared its validation gate (the message names the stage and the families)."""


class Gate:
    def __init__(self, processor, val_dir: str | Path, items: int = 100, margin: float = 15.0,
                 max_new_tokens: int = 8, batch_size: int = 50):
        self.processor, self.val_dir, self.items, self.margin = processor, Path(val_dir), items, margin
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size

    def check(self, model, families=FAMILIES, margin: float | None = None) -> dict:
        """Validation accuracy and blind accuracy per family; ``passed`` when every one is ``margin``
        (default: the gate's) points above blind. Leaves ``model`` in the mode it was in."""
        from dpvr.evaluation import accuracy_report

        margin = self.margin if margin is None else margin
        training = model.training
        kw = dict(limit=self.items, batch_size=self.batch_size, max_new_tokens=self.max_new_tokens, progress=False)
        seen = accuracy_report(model, self.processor, self.val_dir, list(families), **kw)
        blind = accuracy_report(model, self.processor, self.val_dir, list(families), blind=True, **kw)
        model.train(training)
        fams = {f: {"accuracy": seen[f]["accuracy"], "blind": blind[f]["accuracy"],
                    "above_blind": round(seen[f]["accuracy"] - blind[f]["accuracy"], 2)} for f in families}
        return {"passed": all(v["above_blind"] >= margin for v in fams.values()), "margin": margin,
                "families": fams}


def failing(status: dict) -> list[str]:
    """Families of a :meth:`Gate.check` result below its margin."""
    return [f for f, v in status["families"].items() if v["above_blind"] < status["margin"]]


def describe(status: dict) -> str:
    """``pope 71.0 (blind 50.0, +21.0), mc ...`` for messages and logs."""
    return ", ".join(f"{f} {v['accuracy']:.1f} (blind {v['blind']:.1f}, {v['above_blind']:+.1f})"
                     for f, v in status["families"].items())
