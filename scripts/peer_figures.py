"""Figures for the peers issue (SPEC §6): analytic FLOPs and embedded-benchmark accuracy of vanilla,
FastV (R = 50 %, 25 %), VTW (two k), DPVR-LF and LF+FastV, side by side.

    # analytic FLOPs (no weights): the embedded default shape and LLaVA-1.5-7B
    .venv/bin/python scripts/peer_figures.py flops --out runs/peers/flops.json

    # measured CPU prefill time against vanilla in the same run (random weights, 576 image tokens)
    .venv/bin/python scripts/peer_figures.py latency --out runs/peers/latency.json

    # accuracy on the embedded benchmarks (needs a built tiny model and its data folder;
    # --adapter: a trained lf side branch, else lf runs with its untrained copy-initialised one)
    .venv/bin/python scripts/peer_figures.py accuracy --model MODEL_DIR --data DATA_DIR \
        [--adapter ADAPTER_DIR] [--limit 200] --out runs/peers/accuracy.json

Every method is a `DPVRConfig` run by the same engine. The analytic schedule of a config with FastV
pruning (and of the LF+FastV composition) is derived here from its resolved plan, and checked against
:func:`dpvr.efficiency.methods.schedule` for every method that module already knows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from dpvr.config import DPVRConfig
from dpvr.efficiency.flops import ShapeDims, layer_flops, vision_flops_per_image
from dpvr.efficiency.methods import Method, Schedule, prompt_mask, schedule
from dpvr.efficiency.plan import plan_schedule


def methods(num_layers: int, split: int, fastv_k: int = 2, vtw_ks: tuple[int, int] | None = None) -> dict[str, DPVRConfig]:
    """The side-by-side set: label -> config."""
    vtw_ks = vtw_ks or (split, num_layers // 2 + num_layers // 4)
    return {
        "vanilla": DPVRConfig(variant="vanilla"),
        "fastv R=50%": DPVRConfig(variant="fastv", fastv_k=fastv_k, fastv_ratio=0.5),
        "fastv R=25%": DPVRConfig(variant="fastv", fastv_k=fastv_k, fastv_ratio=0.25),
        **{f"vtw k={k}": DPVRConfig(variant="vtw", split=k) for k in vtw_ks},
        f"lf s={split}": DPVRConfig(variant="lf", split=split),
        f"lf s={split} + fastv R=50%": DPVRConfig(variant="lf", split=split, fastv_k=fastv_k, fastv_ratio=0.5),
    }


# ---------------------------------------------------------------------------------------- FLOPs
def _flops(dims: ShapeDims, sched: Schedule) -> int:
    return sum(layer_flops(w, dims) for w in sched.layers) + sum(layer_flops(w, dims) for w in sched.side)


def check_against_methods_module(dims: ShapeDims, split: int, is_image: np.ndarray) -> None:
    """The same count as dpvr.efficiency.methods for every method it already has."""
    n = dims.num_layers
    pairs = [
        (Method("vanilla", DPVRConfig(variant="vanilla")), DPVRConfig(variant="vanilla")),
        (Method("lf", DPVRConfig(variant="lf", split=split)), DPVRConfig(variant="lf", split=split)),
        (Method("kv", DPVRConfig(variant="kv", split=split)), DPVRConfig(variant="kv", split=split)),
        (Method("fastv", options={"k": 2, "ratio": 0.5}), DPVRConfig(variant="fastv", fastv_k=2, fastv_ratio=0.5)),
        (Method("vtw", options={"k": split}), DPVRConfig(variant="vtw", split=split)),
    ]
    for method, cfg in pairs:
        a = _flops(dims, schedule(method, is_image, n))
        b = _flops(dims, plan_schedule(cfg.resolve(n), is_image))
        assert a == b, (method.name, a, b)


def flops_rows(dims: ShapeDims, configs: dict[str, DPVRConfig], system: int, text_tokens: list[int]) -> list[dict]:
    rows = []
    for t in text_tokens:
        is_image = prompt_mask(system, dims.image_tokens, t)
        ref = None
        for label, cfg in configs.items():
            sched = plan_schedule(cfg.resolve(dims.num_layers), is_image)
            lm = _flops(dims, sched)
            whole = lm + vision_flops_per_image(dims)  # lm_head at one position is the same for all
            cache = sum(int(w.keys.sum()) for w in sched.layers)
            ref = ref or {"lm": lm, "whole": whole, "cache": cache}
            rows.append({"shape": dims.name, "method": label, "config": cfg.to_dict(), "system_tokens": system,
                         "image_tokens": int(is_image.sum()), "text_tokens": t, "prefill_lm_flops": lm,
                         "lm_ratio": lm / ref["lm"], "lm_saving": 1 - lm / ref["lm"],
                         "whole_saving": 1 - whole / ref["whole"], "kv_cache_positions": cache,
                         "kv_cache_ratio": cache / ref["cache"]})
    return rows


def cmd_flops(args) -> dict:
    from dpvr.shapes import load_shape_config
    from dpvr.tiny.model import TinyArch, llava_config

    shapes = [(ShapeDims.from_config(llava_config(TinyArch(), vocab_size=300)), "embedded", args.embedded_split,
               args.embedded_system, [40, 100]),
              (ShapeDims.from_config(load_shape_config("llava-1.5-7b")), "llava-1.5-7b", 18, 35, [128, 512])]
    out = {"rows": []}
    for dims, name, split, system, texts in shapes:
        dims = ShapeDims(**{**dims.__dict__, "name": name})
        check_against_methods_module(dims, split, prompt_mask(system, dims.image_tokens, texts[0]))
        rows = flops_rows(dims, methods(dims.num_layers, split), system, texts)
        out["rows"] += rows
        print(f"\n{name}: {dims.num_layers} layers, d={dims.hidden}, {dims.image_tokens} image + {system} system tokens")
        print(f"{'text':>5} {'method':<28} {'LM GFLOP':>10} {'LM saving':>10} {'whole saving':>13} {'KV cache':>9}")
        for r in rows:
            print(f"{r['text_tokens']:>5} {r['method']:<28} {r['prefill_lm_flops'] / 1e9:>10.3f} {r['lm_saving']:>10.1%}"
                  f" {r['whole_saving']:>13.1%} {r['kv_cache_ratio']:>9.3f}")
    return out


# ---------------------------------------------------------------------------------------- latency
def cmd_latency(args) -> dict:
    """Prefill CPU seconds of every method vs vanilla: interleaved rounds, per-round ratios, median.

    CPU time of this process (``time.process_time``) on ``--threads`` threads (default 1): on a
    shared machine wall time mostly measures the other jobs.
    """
    import time

    import torch

    import dpvr
    from dpvr.random_model import random_llava, random_prompt

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = random_llava(image_grid=24, num_layers=args.layers, hidden=args.hidden, vocab=512)
    ids, pix = random_prompt(base, text_tokens=args.text_tokens, system_tokens=35)
    dims = ShapeDims.from_config(base.config)
    is_image = (ids[0] == base.config.image_token_id).numpy()
    configs = methods(args.layers, args.split)
    models = {label: dpvr.get_dpvr_model(base, cfg).eval() for label, cfg in configs.items()}
    times = {label: [] for label in models}
    with torch.inference_mode():
        for r in range(args.rounds + 1):  # round 0 warms up
            for label, model in models.items():
                start = time.process_time()
                model(input_ids=ids, pixel_values=pix, logits_to_keep=1)
                if r:
                    times[label].append(time.process_time() - start)
    ref = _flops(dims, plan_schedule(configs["vanilla"].resolve(args.layers), is_image))
    rows = []
    print(f"{args.layers} layers, d={args.hidden}, 576 image + 35 system + {args.text_tokens} text tokens, "
          f"{args.rounds} rounds, torch threads {torch.get_num_threads()}")
    print(f"{'method':<28} {'median CPU s':>12} {'measured ratio':>15} {'analytic LM ratio':>18}")
    for label, cfg in configs.items():
        ratios = sorted(t / v for t, v in zip(times[label], times["vanilla"]))
        analytic = _flops(dims, plan_schedule(cfg.resolve(args.layers), is_image)) / ref
        rows.append({"method": label, "config": cfg.to_dict(), "median_seconds": float(np.median(times[label])),
                     "ratio_median": float(np.median(ratios)), "ratio_min": ratios[0], "ratio_max": ratios[-1],
                     "analytic_lm_ratio": analytic})
        print(f"{label:<28} {np.median(times[label]):>12.3f} {np.median(ratios):>15.3f} {analytic:>18.3f}")
    return {"layers": args.layers, "hidden": args.hidden, "text_tokens": args.text_tokens, "rounds": args.rounds,
            "threads": args.threads, "clock": "process_time", "rows": rows}


# ---------------------------------------------------------------------------------------- accuracy
def cmd_accuracy(args) -> dict:
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    import dpvr
    from dpvr.evaluation import accuracy_report

    base = LlavaForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    n = base.config.text_config.num_hidden_layers
    trained = dpvr.DPVRModel.from_pretrained(base, args.adapter) if args.adapter else None
    split = trained.dpvr_config.split if trained else (args.split or n // 2)
    out = {"model": str(args.model), "data": str(args.data), "adapter": args.adapter, "limit": args.limit, "results": {}}
    for label, cfg in methods(n, split).items():
        model = dpvr.get_dpvr_model(base, cfg)
        if model.side_branch is not None:
            if trained is not None:
                model.side_branch.load_state_dict(trained.side_branch.state_dict())
            else:
                label += " (untrained side branch)"
        report = accuracy_report(model, processor, args.data, limit=args.limit, progress=False)
        mean = sum(r["accuracy"] for r in report.values()) / len(report)
        out["results"][label] = {"config": cfg.to_dict(), "mean_accuracy": round(mean, 2), "families": report}
        print(f"{label:<46} mean {mean:6.2f}  " + "  ".join(f"{f} {r['accuracy']:.1f}" for f, r in report.items()),
              flush=True)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("flops", help="analytic FLOPs of every method (no weights)")
    f.add_argument("--embedded-split", type=int, default=4)
    f.add_argument("--embedded-system", type=int, default=3, help="tokens before the image in an embedded prompt")
    a = sub.add_parser("accuracy", help="accuracy of every method on the embedded benchmarks")
    a.add_argument("--model", required=True)
    a.add_argument("--data", required=True)
    a.add_argument("--adapter", default=None)
    a.add_argument("--split", type=int, default=None, help="lf split when no --adapter is given (default N/2)")
    a.add_argument("--limit", type=int, default=None)
    lat = sub.add_parser("latency", help="measured CPU prefill time of every method against vanilla")
    lat.add_argument("--layers", type=int, default=12)
    lat.add_argument("--hidden", type=int, default=512)
    lat.add_argument("--split", type=int, default=7)
    lat.add_argument("--text-tokens", type=int, default=80)
    lat.add_argument("--rounds", type=int, default=7)
    lat.add_argument("--threads", type=int, default=1)
    for q in (f, a, lat):
        q.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    result = {"flops": cmd_flops, "latency": cmd_latency, "accuracy": cmd_accuracy}[args.cmd](args)
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(result, fh, indent=2)
        os.replace(tmp, path)
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
