"""Accuracy of one trained adapter on the benchmark families, through `dpvr.evaluation`."""

from __future__ import annotations

from pathlib import Path


def accuracy_of_adapter(model_dir: str, adapter_dir: str | Path, settings) -> dict:
    """``{family: accuracy %, ..., "overall": mean over families}`` of the adapter on the benchmark."""
    from dpvr.model import DPVRModel
    from dpvr.train.run import load_base

    base, processor = load_base(model_dir)
    return _accuracy(DPVRModel.from_pretrained(base, adapter_dir), processor, settings)


def accuracy_of_base(model_dir: str, settings) -> dict:
    """The same as :func:`accuracy_of_adapter` for the unwrapped base model (the sweep's vanilla reference)."""
    from dpvr.train.run import load_base

    base, processor = load_base(model_dir)
    return _accuracy(base, processor, settings)


def _accuracy(model, processor, settings) -> dict:
    from dpvr.evaluation.runner import evaluate_model, load_records

    bench = settings.benchmark
    if bench is None:
        from dpvr import embedded

        bench = embedded.benchmark_dir(progress=False)
    records = load_records(bench, settings.families, settings.eval_limit)
    families, _ = evaluate_model(model, processor, records, bench, batch_size=settings.eval_batch_size, progress=False)
    acc = {fam: summary["accuracy"] for fam, summary in families.items()}
    acc["overall"] = sum(acc.values()) / len(acc)
    return acc
