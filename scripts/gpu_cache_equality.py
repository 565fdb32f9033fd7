#!/usr/bin/env python3
"""Is a static-cache decode token-equal to a dynamic-cache decode? For the stock model, and for DPVR (issue 24).

    PYTHONPATH=src python3 scripts/gpu_cache_equality.py OUT.json                 # CUDA: llava-1.5-7b shape
    PYTHONPATH=src python3 scripts/gpu_cache_equality.py OUT.json --device cpu    # tiny shape, a check that it runs

The issue-24 run found DPVR's static-cache decode not token-equal to its dynamic-cache decode in bf16 on an
H200 (max logit difference ~7, vanilla and LF alike). This separates the causes on one random-weight model:

* ``stock``: the unwrapped ``transformers`` model, ``generate`` with its ``DynamicCache`` vs
  ``cache_implementation="static"`` — what the library itself gives;
* ``dpvr-vanilla`` / ``dpvr-lf``: the wrapped model, dynamic cache vs ``dpvr_static_cache=True``;
* ``dpvr-vanilla vs stock``: the wrapper against the unwrapped model, both on the dynamic cache;

each in bf16 and fp32. Logit differences are reported at the first step (prefill: no cache read yet) and
over the steps before the two greedy paths first differ (after that they decode different tokens, so
their logits are no longer comparable).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import dpvr
from dpvr.efficiency.latency import build_random_model, make_inputs
from dpvr.efficiency.report import write_json_atomic
from dpvr.shapes import default_split, load_shape_config


def _compare(a, b) -> dict:
    """Two ``generate`` outputs (sequences + per-step logits): equal tokens, and where/how much they differ."""
    la, lb = torch.stack(a.logits).float(), torch.stack(b.logits).float()  # (steps, batch, vocab)
    new_a, new_b = a.sequences[:, -la.shape[0]:], b.sequences[:, -lb.shape[0]:]  # (batch, steps)
    differ = (new_a != new_b).any(0).nonzero()
    first = int(differ[0]) if len(differ) else None
    same = la[: (first + 1) if first is not None else None] - lb[: (first + 1) if first is not None else None]
    return {"tokens_equal": first is None, "first_differing_new_token": first,
            "max_abs_logit_diff_step0": float((la[0] - lb[0]).abs().max()),
            "max_abs_logit_diff_until_divergence": float(same.abs().max()),
            "logit_scale_step0": float(la[0].abs().max())}


def run(shape: str, device: torch.device, dtype: torch.dtype, batch: int, text: int, new_tokens: int) -> dict:
    cfg = load_shape_config(shape)
    base = build_random_model(cfg, dtype, device, "sdpa", seed=0).eval()
    inputs = make_inputs(cfg, batch, None, text, 1, dtype, device, seed=1)
    kw = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
              pixel_values=inputs["pixel_values"], max_new_tokens=new_tokens, do_sample=False,
              suppress_tokens=[cfg.image_token_id], output_logits=True, return_dict_in_generate=True,
              pad_token_id=0, eos_token_id=None)
    out = {}
    with torch.inference_mode():
        stock_dynamic = base.generate(**kw)
        stock_static = base.generate(**kw, cache_implementation="static")
        out["stock: static vs dynamic cache"] = _compare(stock_static, stock_dynamic)
        for variant in ("vanilla", "lf"):
            split = None if variant == "vanilla" else default_split(cfg)
            model = dpvr.get_dpvr_model(base, dpvr.DPVRConfig(variant=variant, split=split)).eval()
            dynamic = model.generate(**kw)
            static = model.generate(**kw, dpvr_static_cache=True)
            out[f"dpvr-{variant}: static vs dynamic cache"] = _compare(static, dynamic)
            if variant == "vanilla":
                out["dpvr-vanilla vs stock, dynamic cache"] = _compare(dynamic, stock_dynamic)
                out["dpvr-vanilla vs stock, static cache"] = _compare(static, stock_static)
            del model
    del base
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--device", default="cuda")
    p.add_argument("--config", default=None, help="shape (default llava-1.5-7b on CUDA, tiny on CPU)")
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--deterministic", action="store_true",
                   help="torch.use_deterministic_algorithms(True) (set CUBLAS_WORKSPACE_CONFIG=:4096:8 on CUDA): "
                        "separates run-to-run GPU nondeterminism from real differences")
    args = p.parse_args()
    if args.deterministic:
        torch.use_deterministic_algorithms(True)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("no CUDA device here: pass --device cpu for the tiny CPU run", file=sys.stderr)
        return 2
    shape = args.config or ("llava-1.5-7b" if cuda else "tiny")
    batch, text, new_tokens = (8, 128, 16) if cuda else (2, 16, 4)
    report = {"shape": shape, "device": torch.cuda.get_device_name(0) if cuda else "cpu", "batch": batch,
              "text_tokens": text, "new_tokens": new_tokens, "attn": "sdpa", "torch": torch.__version__,
              "transformers": __import__("transformers").__version__, "deterministic": args.deterministic, "results": {}}
    for name in args.dtypes.split(","):
        t0 = time.time()
        report["results"][name] = run(shape, torch.device(args.device), getattr(torch, name), batch, text, new_tokens)
        print(f"{name} ({time.time() - t0:.0f} s):", json.dumps(report["results"][name], indent=1), flush=True)
        write_json_atomic(Path(args.out), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
