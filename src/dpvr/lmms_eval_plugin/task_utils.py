"""Functions the embedded-benchmark task YAMLs (``tasks/dpvr_*.yaml``) call: documents, prompts, metrics.

The benchmark folder is ``$DPVR_BENCHMARK`` when set (any folder written by ``dpvr data generate``),
else the embedded default (:func:`dpvr.embedded.benchmark_dir`). The YAMLs load a one-line placeholder
file through ``datasets`` and ``process_docs`` swaps in the family's records, so the same YAMLs
serve every benchmark folder. Scores come from :mod:`dpvr.evaluation.metrics`, the functions
``dpvr eval`` uses, in percent.
"""

from __future__ import annotations

import os
from pathlib import Path

from dpvr.evaluation.metrics import pope_metrics, score

ENV = "DPVR_BENCHMARK"


def benchmark_root() -> Path:
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    from dpvr import embedded

    return embedded.benchmark_dir(progress=False)


def _docs(family: str):
    import datasets

    from dpvr.evaluation.benchmark import load_family

    root = benchmark_root()
    records = load_family(root, family)
    rows = [{"id": r["id"], "image_path": str(root / r["image"]), "question": r["question"], "answer": r["answer"],
             "category": r["category"], "options": r.get("options") or []} for r in records]
    return datasets.Dataset.from_list(rows)


def pope_docs(_dataset):
    return _docs("pope")


def mc_docs(_dataset):
    return _docs("mc")


def count_docs(_dataset):
    return _docs("count")


def color_docs(_dataset):
    return _docs("color")


def spatial_docs(_dataset):
    return _docs("spatial")


def digit_docs(_dataset):
    return _docs("digit")


def doc_to_visual(doc):
    from PIL import Image

    with Image.open(doc["image_path"]) as im:
        return [im.convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kw = lmms_eval_specific_kwargs or {}
    return f"{kw.get('pre_prompt', '')}{doc['question']}{kw.get('post_prompt', '')}"


def _record(doc) -> dict:
    return {"id": doc["id"], "question": doc["question"], "answer": doc["answer"], "category": doc["category"],
            **({"options": list(doc["options"])} if doc.get("options") else {})}


def process_results(doc, results):
    """Per doc: the parsed answer and correctness, under each metric name the YAMLs aggregate."""
    prediction = results[0] if results else ""
    s = score(_record(doc), prediction)
    item = {"id": doc["id"], "category": doc["category"], "parsed": s["parsed"], "correct": s["correct"],
            "gold": str(doc["answer"]).strip().lower(), "prediction": prediction}
    return {m: item for m in ("accuracy", "precision", "recall", "f1", "yes_ratio")}


def accuracy(items) -> float:
    return round(100.0 * sum(i["correct"] for i in items) / len(items), 2) if items else 0.0


def _pope(items, metric: str) -> float:
    return pope_metrics([(i["parsed"], i["gold"]) for i in items])[metric]


def precision(items) -> float:
    return _pope(items, "precision")


def recall(items) -> float:
    return _pope(items, "recall")


def f1(items) -> float:
    return _pope(items, "f1")


def yes_ratio(items) -> float:
    return _pope(items, "yes_ratio")
