#!/usr/bin/env python3
"""Where does DPVR's vanilla decode step first differ from the stock model's? One layer at a time.

    PYTHONPATH=src python3 scripts/decode_layer_diff.py OUT.json [--device cpu] [--dtype bfloat16]

Runs ``generate`` for two new tokens with the unwrapped model and with ``DPVRConfig(variant="vanilla")``
around the same weights, records what every decoder layer receives at the first decode step (its
hidden states, the mask it is given, the rotary tables, the cached keys it reads) and what it returns,
and reports the first layer and input where the two runs differ. Written for issue 24's finding that
the wrapped vanilla model is not bit-equal to the stock one in bf16 on a GPU (it is on CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import dpvr
from dpvr.backbones import adapter_for
from dpvr.efficiency.latency import build_random_model, make_inputs
from dpvr.efficiency.report import write_json_atomic
from dpvr.shapes import load_shape_config


def _describe(x):
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return {"shape": list(x.shape), "dtype": str(x.dtype), "stride": list(x.stride()),
                "contiguous": x.is_contiguous(), "storage_offset": x.storage_offset(), "ptr_mod_256": x.data_ptr() % 256}
    if isinstance(x, dict):
        return {k: _describe(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return [_describe(v) for v in x]
    return type(x).__name__


def _record(model, layers, kw) -> list[dict]:
    """Per layer, at the first decode step (q = 1): inputs and output."""
    calls: list[dict] = []

    def pre(i):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if hidden.shape[1] != 1:
                return
            cache = kwargs.get("past_key_values", kwargs.get("cache"))
            keys = None
            if cache is not None and hasattr(cache, "layers") and len(cache.layers) > i:
                keys = getattr(cache.layers[i], "keys", None)
            calls.append({"layer": i, "hidden": hidden.detach().clone(), "hidden_desc": _describe(hidden), "mask": kwargs.get("attention_mask"),
                          "mask_desc": _describe(kwargs.get("attention_mask")),
                          "cos": kwargs["position_embeddings"][0].detach().clone(),
                          "position_ids": _describe(kwargs.get("position_ids")),
                          "keys": None if keys is None else keys.detach().clone(), "keys_desc": _describe(keys),
                          "kwargs": sorted(kwargs)})
        return hook

    def post(i):
        def hook(module, args, kwargs, output):
            hidden = args[0] if args else kwargs["hidden_states"]
            if hidden.shape[1] != 1:
                return
            out = output[0] if isinstance(output, tuple) else output
            calls[-1]["out"] = out.detach().clone()
        return hook

    handles = [layer.register_forward_pre_hook(pre(i), with_kwargs=True) for i, layer in enumerate(layers)]
    handles += [layer.register_forward_hook(post(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        with torch.inference_mode():
            model.generate(**kw)
    finally:
        for h in handles:
            h.remove()
    return [c for c in calls][: len(layers)]


def _diff(a, b):
    if a is None or b is None:
        return None if a is None and b is None else "one side None"
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        return "not tensors"
    if a.shape != b.shape:
        return f"shapes {list(a.shape)} vs {list(b.shape)}"
    return float((a.float() - b.float()).abs().max())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--config", default=None)
    args = p.parse_args()
    cuda = args.device.startswith("cuda")
    shape = args.config or ("llava-1.5-7b" if cuda else "tiny")
    dtype, device = getattr(torch, args.dtype), torch.device(args.device)
    batch, text = (8, 128) if cuda else (2, 16)
    cfg = load_shape_config(shape)
    base = build_random_model(cfg, dtype, device, "sdpa", seed=0).eval()
    inputs = make_inputs(cfg, batch, None, text, 1, dtype, device, seed=1)
    kw = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
              pixel_values=inputs["pixel_values"], max_new_tokens=2, do_sample=False,
              suppress_tokens=[cfg.image_token_id], pad_token_id=0, eos_token_id=None)
    layers = adapter_for(base).layers
    stock = _record(base, layers, kw)
    again = _record(base, layers, kw)  # control: the stock model run twice (is the GPU run-to-run deterministic?)
    control = [_diff(a.get("out"), b.get("out")) for a, b in zip(stock, again)]
    model = dpvr.get_dpvr_model(base, dpvr.DPVRConfig(variant="vanilla")).eval()
    wrapped = _record(model, layers, kw)
    rows = []
    for s, w in zip(stock, wrapped):
        rows.append({"layer": s["layer"], "hidden_in": _diff(s["hidden"], w["hidden"]), "cos": _diff(s["cos"], w["cos"]),
                     "mask": _diff(s["mask"], w["mask"]), "keys": _diff(s["keys"], w["keys"]),
                     "out": _diff(s.get("out"), w.get("out")), "stock_hidden": s["hidden_desc"],
                     "dpvr_hidden": w["hidden_desc"],
                     "stock_mask": s["mask_desc"], "dpvr_mask": w["mask_desc"],
                     "stock_keys": s["keys_desc"], "dpvr_keys": w["keys_desc"],
                     "stock_position_ids": s["position_ids"], "dpvr_position_ids": w["position_ids"],
                     "stock_kwargs": s["kwargs"], "dpvr_kwargs": w["kwargs"]})
    first = next((r for r in rows if r["out"] not in (0.0, None)), None)
    report = {"shape": shape, "dtype": args.dtype, "device": torch.cuda.get_device_name(0) if cuda else "cpu",
              "attention_mask_all_ones": bool(inputs["attention_mask"].all()), "first_differing_layer": first,
              "stock_vs_stock_again_out_diff_per_layer": control,
              "layers": rows}
    write_json_atomic(Path(args.out), report)
    print("stock vs stock again, per layer:", control)
    for r in rows[:3]:
        print({k: r[k] for k in ("layer", "hidden_in", "keys", "out", "stock_hidden", "dpvr_hidden")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
