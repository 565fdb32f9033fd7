"""Accuracy recovery on the embedded default: LF with and without `--distill`, PC, vanilla and FastV-50 (issue 23).

    python scripts/distill_study.py --out runs/distill --steps 150 --seeds 0,1 --limit 100

Trains, with the same data, steps, batch and seeds: LF at the suggested split (``--split``, default 6)
and at a cheaper one (``--cheap-split``, default 5: the least routing that saves >= 7 % of the tiny
shape's LM FLOPs), each plain and distilled (live teacher; ``--cache``: targets stored once in
OUT/teacher-targets), and PC at the suggested split. Evaluates them with vanilla and FastV-50 through `dpvr.evaluation.run_eval`
(``--limit`` questions per family), then writes OUT/study.json and OUT/study.md (mean ± std over
seeds, analytic LM FLOPs saving at the tiny shape and at LLaVA-1.5-7B's, final losses and the
distillation terms). A finished training (its result.json) is reused, so an interrupted study resumes.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from dpvr import embedded
from dpvr.config import DPVRConfig
from dpvr.evaluation import EvalSettings, run_eval
from dpvr.io import write_json_atomic, write_text_atomic
from dpvr.train import TrainArgs, train


def runs(split: int, cheap: int) -> dict[str, dict]:
    """Name -> TrainArgs settings of every trained method (seed added per run)."""
    return {
        f"lf-s{split}": dict(variant="lf", split=split),
        f"lf-s{split}+distill": dict(variant="lf", split=split, distill=True),
        f"lf-s{cheap}": dict(variant="lf", split=cheap),
        f"lf-s{cheap}+distill": dict(variant="lf", split=cheap, distill=True),
        f"pc-s{split}": dict(variant="pc", split=split),
    }


def train_all(out: Path, methods: dict, seeds: list[int], steps: int, batch: int, extra: dict) -> dict:
    results = {}
    for name, kw in methods.items():
        for seed in seeds:
            folder = out / "train" / f"{name}-seed{seed}"
            if not (folder / "result.json").is_file():
                cache = {"distill_cache": str(out / "teacher-targets")} if kw.get("distill") and extra.get("cache") else {}
                train(TrainArgs(out=str(folder), seed=seed, max_steps=steps, batch_size=batch, logging_steps=5,
                                eval_samples=64, max_samples=extra.get("max_samples"), progress=False, **kw, **cache))
            results[(name, seed)] = json.loads((folder / "result.json").read_text())
    return results


def flops(config: DPVRConfig) -> dict:
    """Analytic LM prefill saving at the tiny shape (the demo's prompt: 3 system, 24 text tokens) and at
    LLaVA-1.5-7B's (35 system, 128 text; the split scaled to 32 layers), as `dpvr.demo.flops` counts them."""
    from transformers import AutoConfig

    from dpvr.efficiency.flops import ShapeDims
    from dpvr.efficiency.plan import compare_configs
    from dpvr.shapes import load_shape_config

    tiny = AutoConfig.from_pretrained(embedded.checkpoint_path())
    vanilla = DPVRConfig(variant="vanilla")
    rows = compare_configs(ShapeDims.from_config(tiny), {"vanilla": vanilla, "m": config}, 3, 24)
    out = {"tiny_lm_saving": rows[-1]["lm_saving"]}
    n = tiny.get_text_config().num_hidden_layers
    big_split = None if config.split is None else round(config.split * 32 / n)
    big = DPVRConfig.from_dict(config.to_dict() | ({"split": big_split} if big_split else {}))
    rows = compare_configs(ShapeDims.from_config(load_shape_config("llava-1.5-7b")), {"vanilla": vanilla, "m": big}, 35, 128)
    return out | {"llava7b_lm_saving": rows[-1]["lm_saving"], "llava7b_split": big_split}


def teacher_gap(out: Path, methods: dict, seeds: list[int], samples: int = 64) -> dict:
    """Held-out distance of each routed model to the unrouted base, at init and after training.

    Per supervised token: KL(base ‖ routed) of the next-token distributions; per visual token: the
    feature term (relative squared error of the side output against the base's states entering the
    fusion layer). A mechanism check: where the KL stays high while the feature term is ~0, the gap is
    not in what the side branch computes but in what the text tokens miss between the split and F.
    """
    import torch

    from dpvr.engine.teacher import side_capture
    from dpvr.model import DPVRModel, get_dpvr_model
    from dpvr.train.data import load_records
    from dpvr.train.distill import feature_loss, kl_sum, live_targets
    from dpvr.train.run import _split_heldout, datasets_for, load_base

    model_dir, data = str(embedded.checkpoint_path()), str(embedded.benchmark_dir(progress=False) / "train.json")
    base, processor = load_base(model_dir)
    make, collator_class = datasets_for(base, processor, str(Path(data).parent), None, False)
    _, held = _split_heldout(load_records(data), TrainArgs(out=str(out), eval_samples=samples))
    dataset, collator = make(held), collator_class(processor.tokenizer.pad_token_id)

    def gap(model) -> dict:
        kl = feature = 0.0
        positions = tokens = 0
        for start in range(0, len(dataset), 16):
            batch = collator([dataset[i] for i in range(start, min(start + 16, len(dataset)))])
            targets = live_targets(model, batch, feature_layers(model.plan), top_k=0)
            with torch.no_grad(), side_capture(model, batch["input_ids"]) as side:
                logits = model(**batch, use_cache=False).logits
            kl += float(kl_sum(logits, batch["labels"], targets, 1.0))
            positions += targets.logit_values.shape[0]
            if side.states is not None:
                feature += float(feature_loss(side.states, targets.states, "mse")) * side.states.shape[0]
                tokens += side.states.shape[0]
        return {"kl_per_token": kl / max(positions, 1), "feature_mse": feature / max(tokens, 1)}

    from dpvr.engine.teacher import feature_layers

    result = {}
    for name, kw in methods.items():
        init = gap(get_dpvr_model(base, DPVRConfig(variant=kw["variant"], split=kw["split"])).eval())
        trained = [gap(DPVRModel.from_pretrained(base, out / "train" / f"{name}-seed{s}" / "adapter").eval())
                   for s in seeds]
        result[name] = {"init": init, "trained": trained}
    return result


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/distill")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-samples", type=int, help="train on the first N records of the (seeded) data order")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--limit", type=int, default=100, help="questions per benchmark family")
    p.add_argument("--split", type=int, default=6)
    p.add_argument("--cheap-split", type=int, default=5)
    p.add_argument("--only-train", action="store_true")
    p.add_argument("--eval-only", metavar="GROUP", help="evaluate one group (reference, seed0, ...) and stop")
    p.add_argument("--methods", help="comma-separated subset of the trained methods (default: all five)")
    p.add_argument("--cache", action="store_true", help="distilled runs read the teacher's targets from OUT/teacher-targets "
                   "(computed once over the whole training set) instead of a teacher forward per step")
    a = p.parse_args()
    out, seeds = Path(a.out), [int(s) for s in a.seeds.split(",")]
    methods = runs(a.split, a.cheap_split)
    if a.methods:
        methods = {k: v for k, v in methods.items() if k in a.methods.split(",")}
    trained = {} if a.eval_only else train_all(out, methods, seeds, a.steps, a.batch_size,
                                               {"cache": a.cache, "max_samples": a.max_samples})
    if a.only_train:
        return
    settings = EvalSettings(limit=a.limit, batch_size=32, max_new_tokens=8, progress=False)
    groups = {"reference": ["vanilla", "fastv-50=fastv:k=2,ratio=0.5"]} | {
        f"seed{seed}": [f"{name}-seed{seed}=adapter:{out / 'train' / f'{name}-seed{seed}' / 'adapter'}" for name in methods]
        for seed in seeds}
    if a.eval_only:  # one group, e.g. while the other seeds still train
        groups = {a.eval_only: groups[a.eval_only]}
    for group, specs in groups.items():
        if not (out / "eval" / group / "results.json").is_file():
            run_eval(specs, out / "eval" / group, settings=settings)
    if a.eval_only:
        return
    results = {}
    for group in groups:
        results |= json.loads((out / "eval" / group / "results.json").read_text())["methods"]

    def acc(label: str) -> dict:
        fams = results[label]["families"]
        return {f: v["accuracy"] for f, v in fams.items()} | {"overall": results[label]["overall"]["accuracy"]}

    table = {"vanilla": {"overall": [acc("vanilla")["overall"]], "flops": flops(DPVRConfig(variant="vanilla"))},
             "fastv-50": {"overall": [acc("fastv-50")["overall"]],
                          "flops": flops(DPVRConfig(variant="fastv", fastv_k=2, fastv_ratio=0.5))}}
    for name, kw in methods.items():
        rows = [trained[(name, s)] for s in seeds]
        table[name] = {
            "overall": [acc(f"{name}-seed{s}")["overall"] for s in seeds],
            "families": [acc(f"{name}-seed{s}") for s in seeds],
            "flops": flops(DPVRConfig(variant=kw["variant"], split=kw["split"])),
            "eval_loss_before": [r["eval_loss_before"] for r in rows],
            "eval_loss_after": [r["eval_loss_after"] for r in rows],
            "steps_per_second": [r["steps_per_second"] for r in rows],
        }
    for row in table.values():
        row["mean"], row["std"] = mean_std(row["overall"])
    gaps = teacher_gap(out, methods, seeds)
    for name, g in gaps.items():
        table[name]["teacher_gap"] = g
    report = {"settings": vars(a), "methods": table, "vanilla_families": acc("vanilla")}
    write_json_atomic(out / "study.json", report)
    lines = ["| method | overall accuracy (mean ± std over seeds) | seeds | LM FLOPs saving, tiny | 7B shape | "
             "held-out loss before → after | KL to base per token, init → trained | feature term, init → trained |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in table.items():
        loss = (f"{statistics.fmean(row['eval_loss_before']):.4f} → {statistics.fmean(row['eval_loss_after']):.4f}"
                if "eval_loss_after" in row else "–")
        kl = feat = "–"
        if "teacher_gap" in row:
            g = row["teacher_gap"]
            kl = f"{g['init']['kl_per_token']:.4f} → {statistics.fmean(t['kl_per_token'] for t in g['trained']):.4f}"
            feat = f"{g['init']['feature_mse']:.4f} → {statistics.fmean(t['feature_mse'] for t in g['trained']):.4f}"
        lines.append(f"| {name} | {row['mean']:.1f} ± {row['std']:.1f} | {len(row['overall'])} | "
                     f"{100 * row['flops']['tiny_lm_saving']:.1f} % | {100 * row['flops']['llava7b_lm_saving']:.1f} % | "
                     f"{loss} | {kl} | {feat} |")
    write_text_atomic(out / "study.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
