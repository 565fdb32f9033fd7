"""LF / vanilla prefill latency of a bundled family shape with random weights (GPU, bf16, sdpa).

    python scripts/gpu_family_prefill.py --shape qwen2.5-vl-7b --batch 8 --text 128 --out OUT

Builds the family's model from its bundled config on the GPU (random weights, nothing downloaded),
one 1280x720 image per sample (the family's own resize rule), and times with CUDA events, methods
interleaved, after warm-up: (a) the whole prefill (vision tower + LM + last-position head) and
(b) the language model alone on the same merged embeddings (vanilla: the stock LM; LF: the routed
stack). Prints median ratios with their interquartile range beside the analytic LM-FLOPs ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def _quartiles(xs):
    q = statistics.quantiles(xs, n=4)
    return q[0], statistics.median(xs), q[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="qwen2.5-vl-7b")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--text", type=int, default=128)
    ap.add_argument("--system", type=int, default=35)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from transformers import AutoModelForImageTextToText

    import dpvr
    from dpvr.efficiency.inputs import model_inputs
    from dpvr.shapes.layout import prompt_layout
    from dpvr.engine.router import routed_decoder_forward
    from dpvr.shapes import default_split, load_shape_config

    dev, dtype = torch.device(args.device), getattr(torch, args.dtype)
    config = load_shape_config(args.shape)
    config._attn_implementation = "sdpa"
    for sub in (config.get_text_config(), config.vision_config):
        sub._attn_implementation = "sdpa"
    t0 = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(dev):
        base = AutoModelForImageTextToText.from_config(config, dtype=dtype).eval()
    build_s = time.perf_counter() - t0
    split = default_split(config)
    # the shape's default layout (qwen2.5-vl-7b: one 1280x720 image), counted by the adapter's rule as the FLOPs are
    layout = prompt_layout(config, "image", system_tokens=args.system)
    batch = model_inputs(config, layout, args.batch, args.text)
    batch.pop("attention_mask")
    batch = {k: (v.to(dev, dtype) if v.is_floating_point() else v.to(dev)) for k, v in batch.items()}
    lf = dpvr.get_dpvr_model(base, dpvr.DPVRConfig(variant="lf", split=split))
    n_visual = int(lf.backbone.visual_mask(batch["input_ids"])[0].sum())
    length = batch["input_ids"].shape[1]

    with torch.no_grad():
        lm = lf.backbone.lm_inputs(batch["input_ids"], None, None, None, **{k: v for k, v in batch.items() if k != "input_ids"})

    def whole_vanilla():
        return base(**batch, logits_to_keep=1, use_cache=False).logits

    def whole_lf():
        return lf(**batch, logits_to_keep=1, use_cache=False).logits

    def lm_vanilla():
        return base.model.language_model(inputs_embeds=lm.inputs_embeds, position_ids=lm.position_ids, use_cache=False,
                                         **lm.extras).last_hidden_state[:, -1:]

    def lm_lf():
        return routed_decoder_forward(lf.backbone, lf.plan, lf.side_branch, batch["input_ids"], lm.inputs_embeds, None,
                                      lm.position_ids, None, False, extras=lm.extras)[:, -1:]

    fns = {"whole/vanilla": whole_vanilla, "whole/lf": whole_lf, "lm/vanilla": lm_vanilla, "lm/lf": lm_lf}
    times = {k: [] for k in fns}
    with torch.no_grad():
        for _ in range(args.warmup):
            for f in fns.values():
                f()
        torch.cuda.synchronize() if dev.type == "cuda" else None
        for _ in range(args.rounds):
            for name, f in fns.items():  # interleaved
                if dev.type == "cuda":
                    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    s.record(); f(); e.record(); torch.cuda.synchronize()
                    times[name].append(s.elapsed_time(e) / 1e3)
                else:
                    t = time.perf_counter(); f(); times[name].append(time.perf_counter() - t)

    # analytic FLOPs of the same schedule and prompt layout (dpvr bench flops)
    from dpvr.efficiency.flops import ShapeDims, compare
    from dpvr.efficiency.methods import make_methods
    from dpvr.shapes.layout import prompt_layout

    result = {"shape": args.shape, "batch": args.batch, "text_tokens": args.text, "system_tokens": args.system,
              "visual_tokens": n_visual, "sequence": length, "split": split, "dtype": args.dtype,
              "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu", "build_s": round(build_s, 1),
              "rounds": args.rounds, "warmup": args.warmup, "seconds": times}
    for part in ("whole", "lm"):
        ratios = [a / b for a, b in zip(times[f"{part}/lf"], times[f"{part}/vanilla"])]
        q1, med, q3 = _quartiles(ratios)
        result[f"{part}_ratio"] = {"median": med, "q1": q1, "q3": q3,
                                   "vanilla_s": statistics.median(times[f"{part}/vanilla"]),
                                   "lf_s": statistics.median(times[f"{part}/lf"])}
    layout = prompt_layout(config, "image", system_tokens=args.system)
    dims = ShapeDims.from_config(config, layout)
    rows = compare(dims, make_methods(["lf"], dims.num_layers, split=split), text_tokens=[args.text], layout=layout)
    result["analytic"] = rows
    text = (f"{args.shape} bs{args.batch} text {args.text} visual {n_visual} split {split} on {result['device']}: "
            f"prefill LF/vanilla whole {result['whole_ratio']['median']:.3f} "
            f"[IQR {result['whole_ratio']['q1']:.3f}-{result['whole_ratio']['q3']:.3f}] "
            f"({result['whole_ratio']['vanilla_s'] * 1e3:.1f} ms vanilla), "
            f"LM only {result['lm_ratio']['median']:.3f} [IQR {result['lm_ratio']['q1']:.3f}-{result['lm_ratio']['q3']:.3f}] "
            f"({result['lm_ratio']['vanilla_s'] * 1e3:.1f} ms vanilla); analytic LM {rows[1]['prefill_lm_ratio']:.3f}, "
            f"whole {rows[1]['prefill_whole_ratio']:.3f}")
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"prefill-{args.shape}-bs{args.batch}.json").write_text(json.dumps(result, indent=2, default=str))
        (out / f"prefill-{args.shape}-bs{args.batch}.txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
