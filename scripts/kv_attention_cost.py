#!/usr/bin/env python3
"""What the ``kv`` mode's attention costs with its explicit mask, against mask-free kernels of the same size.

    python scripts/kv_attention_cost.py --device cpu --dtype float32 --heads 16 --head-dim 64
    python scripts/kv_attention_cost.py --device cuda --dtype bfloat16 --heads 32 --head-dim 128 --batch 8

Text queries (Lt) attend to every key (L) up to their own original position. Per sample, the set of
visible keys grows by one key per text query, except at an image, where it jumps by its length, so no
single causal call expresses it: in general an explicit mask is needed. When the image is one run of
positions shared by the batch (one image, same layout, no padding), the engine splits the call in two
mask-free ones instead (``dpvr.engine.kv_attention.KVSplitBias``: the text before the image causally over
its own keys, the text after it over every key with a lower-right causal pattern). This script times sdpa
on the explicit mask (bool and additive), on that split, and, as lower bounds, a causal and an unmasked call
of the same (Lt, L) size, plus the rest of a kv layer's extra work (image K/V projection, text+image K/V
merge: by gather for any layout, by one concatenation when every sample's image is the same run of positions).
Timings: median and interquartile range of ``--repeats`` rounds after ``--warmup``; JSON to stdout.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from dpvr.engine.kv_attention import KVSplitBias


def timed(fn, device, warmup, repeats):
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter() if device.type == "cuda" else time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append((time.perf_counter() if device.type == "cuda" else time.process_time()) - t)
    out.sort()
    n = len(out)
    return {"median_ms": 1e3 * out[n // 2], "p25_ms": 1e3 * out[n // 4], "p75_ms": 1e3 * out[(3 * n) // 4]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--system", type=int, default=35)
    p.add_argument("--image", type=int, default=576)
    p.add_argument("--text", type=int, default=128)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    b, h, hd = args.batch, args.heads, args.head_dim
    lt, li = args.system + args.text, args.image
    length = lt + li
    q = torch.randn(b, h, lt, hd, device=device, dtype=dtype)
    k = torch.randn(b, h, length, hd, device=device, dtype=dtype)
    v = torch.randn_like(k)
    text_pos = torch.cat([torch.arange(args.system), torch.arange(args.system + li, length)]).to(device)
    allowed = (torch.arange(length, device=device)[None, :] <= text_pos[:, None])[None, None].expand(b, 1, lt, length)
    additive = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
    split = KVSplitBias(args.system, li, lt, device=device)
    assert torch.equal(split.materialize().expand_as(allowed), allowed)
    d = h * hd
    w_kv = torch.randn(2 * d, d, device=device, dtype=dtype) / d ** 0.5
    image_hidden = torch.randn(b, li, d, device=device, dtype=dtype)
    merge_idx = torch.cat([torch.arange(args.system), torch.arange(lt, length), torch.arange(args.system, lt)]).to(device)
    idx = merge_idx[None, None, :, None].expand(b, h, length, hd)
    k_text = k[:, :, :lt]
    k_img = k[:, :, lt:]
    cases = {
        "sdpa_bool_mask": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=allowed),
        "sdpa_additive_mask (what kv runs for other layouts)": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=additive),
        "sdpa_split_mask_free (what kv runs for one shared image run)": lambda: F.scaled_dot_product_attention(
            q, k, v, attn_mask=split),
        "sdpa_is_causal_same_size (lower bound, wrong pattern)": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        "sdpa_no_mask_same_size (lower bound, wrong pattern)": lambda: F.scaled_dot_product_attention(q, k, v),
        "image_kv_projection": lambda: image_hidden @ w_kv.T,
        "kv_merge_cat_gather (K and V; any layout)": lambda: [torch.cat([k_text, k_img], 2).gather(2, idx)
                                                              for _ in range(2)],
        "kv_merge_cat (K and V; one shared image run, what the engine does then)": lambda: [
            torch.cat([k_text[:, :, :args.system], k_img, k_text[:, :, args.system:]], 2) for _ in range(2)],
    }
    res = {"device": str(device), "dtype": args.dtype, "batch": b, "heads": h, "head_dim": hd, "text_queries": lt,
           "keys": length, "torch": torch.__version__,
           "timing": "CUDA-synchronised perf_counter" if device.type == "cuda" else "process_time, 1 thread",
           "cases": {name: timed(fn, device, args.warmup, args.repeats) for name, fn in cases.items()}}
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
