"""lmms-eval's stock ``pope`` task (YAML and utils.py unchanged but for the data location) through the dpvr plugin.

    /tmp/dpvr-eval-venv/bin/python scripts/stock_lmms_pope.py --benchmark runs/fresh6-s12345 --out runs/stock-pope

Writes ``OUT/stock-pope.json``: the task's own accuracy, precision, recall, F1 and yes-ratio (fractions, as
lmms-eval reports them) with the image and with blank images (the plugin's ``blind``), for the model given
(default: the embedded tiny LLaVA) with ``method``. Runs in the lmms-eval venv (``dpvr[eval]``), offline.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--benchmark", required=True, help="a folder written by `dpvr data generate`")
    p.add_argument("--out", required=True)
    p.add_argument("--model", default=None, help="base model folder (default: the embedded tiny LLaVA)")
    p.add_argument("--method", default="vanilla")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_CACHE", str(Path(args.out) / "hf-cache"))
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from dpvr.lmms_eval_plugin.stock import stock_task

    task_dir = stock_task("pope", args.benchmark, args.out)
    tasks = TaskManager("WARNING", include_path=str(task_dir), include_defaults=False)
    model_args = (f"pretrained={args.model}," if args.model else "") + f"method={args.method}"
    result = {"benchmark": str(args.benchmark), "model": args.model or "embedded", "method": args.method,
              "task": "pope (lmms-eval's stock task; dataset_path -> local copy)", "runs": {}}
    for label, blind in (("with image", False), ("blind", True)):
        got = simple_evaluate(model="dpvr", model_args=model_args + (",blind=True" if blind else ""), tasks=["pope"],
                              batch_size=args.batch_size, device="cpu", limit=args.limit, task_manager=tasks,
                              verbosity="WARNING")
        figures = {k.split(",")[0]: v for k, v in got["results"]["pope"].items()
                   if k.startswith("pope_") and "stderr" not in k and isinstance(v, (int, float))}
        result["runs"][label] = figures
        print(f"{label:<11} " + "  ".join(f"{k[5:]} {v:.4f}" for k, v in figures.items()), flush=True)
    Path(args.out, "stock-pope.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
