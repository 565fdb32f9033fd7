"""lmms-eval's own stock tasks on local copies of dpvr benchmarks: the task files unchanged but for the data location.

lmms-eval's ``pope`` task reads ``lmms-lab-encoder/POPE`` from the Hugging Face hub. This module writes a
benchmark's POPE file in that dataset's schema (``question_id``, ``question`` without an answer-format
instruction — the task appends LLaVA-1.5's "Answer the question using a single word or phrase." —,
lower-case ``answer``, ``category``, ``image_source``, ``image``) as a local parquet dataset, and copies
the installed task's YAML and ``utils.py`` into a folder with only the ``dataset_path:`` line changed.

    from dpvr.lmms_eval_plugin.stock import stock_task
    task_dir = stock_task("pope", benchmark_dir="runs/fresh", out="runs/stock-pope")
    # lmms-eval --model dpvr --tasks pope --include_path runs/stock-pope/task  (with include_defaults off)

Needs lmms-eval and ``datasets`` (the ``dpvr[eval]`` extra).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

#: stock task -> (its folder in lmms-eval's tasks, its YAML, the dpvr family whose records it reads)
STOCK_TASKS = {"pope": ("pope", "pope.yaml", "pope")}


def pope_rows(benchmark_dir: str | Path) -> list[dict]:
    """The benchmark's POPE records in lmms-lab/POPE's schema (image as PNG bytes)."""
    from dpvr.data.questions import stem
    from dpvr.evaluation.benchmark import load_family

    root = Path(benchmark_dir)
    rows = []
    for i, r in enumerate(load_family(root, "pope")):
        rows.append({"id": r["id"], "question_id": str(i), "question": stem(r["question"]),
                     "answer": str(r["answer"]).strip().lower(), "image_source": r["id"], "category": r["category"],
                     "image": {"bytes": (root / r["image"]).read_bytes(), "path": Path(r["image"]).name}})
    return rows


def write_dataset(rows: list[dict], out: str | Path) -> Path:
    """``rows`` as a local parquet dataset with a ``test`` split (``out/data/test-00000-of-00001.parquet``)."""
    import datasets

    feats = datasets.Features({"id": datasets.Value("string"), "question_id": datasets.Value("string"),
                               "question": datasets.Value("string"), "answer": datasets.Value("string"),
                               "image_source": datasets.Value("string"), "category": datasets.Value("string"),
                               "image": datasets.Image()})
    out = Path(out)
    (out / "data").mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows, features=feats).to_parquet(str(out / "data" / "test-00000-of-00001.parquet"))
    return out


def stock_task(task: str, benchmark_dir: str | Path, out: str | Path) -> Path:
    """Write ``out/dataset`` (the benchmark's records in the stock dataset's schema) and ``out/task`` (the installed
    lmms-eval task's YAML and ``utils.py``, the ``dataset_path:`` line pointing at ``out/dataset``); return ``out/task``."""
    import lmms_eval

    if task not in STOCK_TASKS:
        raise ValueError(f"no local copy for stock task {task!r}; available: {', '.join(STOCK_TASKS)}")
    folder, yaml_name, family = STOCK_TASKS[task]
    src = Path(lmms_eval.__file__).resolve().parent / "tasks" / folder
    out = Path(out)
    data = write_dataset(pope_rows(benchmark_dir), out / "dataset")
    task_dir = out / "task"
    task_dir.mkdir(parents=True, exist_ok=True)
    text = (src / yaml_name).read_text()
    lines = re.findall(r"(?m)^dataset_path:.*$", text)
    if len(lines) != 1:
        raise ValueError(f"{src / yaml_name}: expected one dataset_path line, found {len(lines)}")
    (task_dir / yaml_name).write_text(text.replace(lines[0], f"dataset_path: {data.resolve()}"))
    shutil.copyfile(src / "utils.py", task_dir / "utils.py")
    return task_dir
