#!/usr/bin/env python3
"""Speed figures of issue 24 on one GPU: compiled decode, prefill at batch 1 and 8, kv prefill, compiled == eager.

    PYTHONPATH=src python3 scripts/gpu_bench_speed.py OUT                      # H200: llava-1.5-7b, bf16, sdpa
    PYTHONPATH=src python3 scripts/gpu_bench_speed.py OUT --device cpu         # the same steps on the tiny shape

(``scripts/gpu_bench_speed.sh OUT`` wraps it.) Random weights, nothing downloaded; needs only torch,
transformers (5.24) and dpvr. Writes into OUT:

* ``decode.json``: LF / vanilla ms per token and tokens/s, compiled (static per-layer caches), batch 8
  and 64 at 128 text tokens (``dpvr.efficiency.decode``: 3 warm-ups, 10 interleaved rounds, IQR);
* ``prefill.json``: prefill of vanilla, LF and kv at batch 1 and 8, 64-512 text tokens, paired ratios
  and the share of the analytic saving realised (``dpvr.efficiency.latency``);
* ``prefill_compiled.json``: the same at batch 1 (128 and 512 text tokens), eager and with the prefill
  compiled (``DPVRModel.compile_prefill``, the decode step's backend), each against vanilla alike;
* ``equality.json``: greedy tokens of compiled decode vs eager decode (static cache) vs the dynamic
  cache, LF and vanilla, batch 8; ``kv_attention.json``: the kv layer's attention with its explicit
  mask, as the engine's mask-free split, and mask-free kernels of the same size (scripts/kv_attention_cost.py);
* ``summary.txt``: the ratios against the issue's targets, one line each.
Each part is written as soon as it is done, so a run cut short keeps what it finished.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

import dpvr
from dpvr.efficiency.decode import DecodeSettings, format_decode_table, measure_decode
from dpvr.efficiency.latency import LatencySettings, build_random_model, format_latency_table, make_inputs, measure_latency
from dpvr.efficiency.report import write_json_atomic
from dpvr.shapes import default_split, load_shape_config

TARGETS = {  # LF / vanilla, the targets (ratio <= target), and kv's share of its analytic saving (>=)
    "decode_compiled_b8": 0.95, "decode_compiled_b64": 0.85, "prefill_b1_t128": 0.80,
    "prefill_b8_share": 0.95, "kv_prefill_b8_share": 0.80,
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def equality(base, cfg, device, dtype, batch: int, text: int, new_tokens: int, backend: str, mode) -> dict:
    """Greedy tokens: compiled static-cache decode == eager static == eager dynamic (LF and vanilla)."""
    inputs = make_inputs(cfg, batch, 35, text, 1, dtype, device, seed=1)
    out = {}
    for variant in ("vanilla", "lf"):
        model = dpvr.get_dpvr_model(base, dpvr.DPVRConfig(variant=variant, split=None if variant == "vanilla"
                                                          else default_split(cfg))).eval()
        kw = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                  pixel_values=inputs["pixel_values"], max_new_tokens=new_tokens, do_sample=False,
                  suppress_tokens=[cfg.image_token_id], output_logits=True, return_dict_in_generate=True,
                  pad_token_id=0, eos_token_id=None)
        with torch.inference_mode():
            dynamic = model.generate(**kw)
            static = model.generate(**kw, dpvr_static_cache=True)
            model.compile_decode(mode=mode, backend=backend)
            compiled = model.generate(**kw, dpvr_static_cache=True)
            model.compile_decode(backend=None)
        logits = {k: torch.stack(v.logits).float() for k, v in
                  (("dynamic", dynamic), ("static", static), ("compiled", compiled))}
        out[variant] = {
            "compiled_tokens_equal_eager_static": bool(torch.equal(compiled.sequences, static.sequences)),
            "static_tokens_equal_dynamic": bool(torch.equal(static.sequences, dynamic.sequences)),
            "first_differing_step_compiled_vs_static": _first_diff(compiled.sequences, static.sequences),
            "max_abs_logit_diff_compiled_vs_static": float((logits["compiled"] - logits["static"]).abs().max()),
            "max_abs_logit_diff_static_vs_dynamic": float((logits["static"] - logits["dynamic"]).abs().max()),
        }
    return {"batch": batch, "text_tokens": text, "new_tokens": new_tokens, "compile_backend": backend,
            "compile_mode": mode, "results": out}


def _first_diff(a: torch.Tensor, b: torch.Tensor):
    diff = (a != b).any(0).nonzero()
    return None if not len(diff) else int(diff[0])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--device", default="cuda")
    p.add_argument("--config", default=None, help="shape (default llava-1.5-7b on CUDA, tiny on CPU)")
    p.add_argument("--backend", default="cudagraphs",
                   help="torch.compile backend of the decode step: cudagraphs (CUDA graphs of the eager kernels, "
                        "compiles in seconds; default) or inductor (mode reduce-overhead; longer compile)")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: decode,prefill,prefill-compiled,equality,kv")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("no CUDA device here: pass --device cpu for the tiny CPU run", file=sys.stderr)
        return 2
    shape = args.config or ("llava-1.5-7b" if cuda else "tiny")
    dtype_name = "bfloat16" if cuda else "float32"
    dtype = getattr(torch, dtype_name)
    device = torch.device(args.device)
    backend = args.backend if cuda else "eager"  # CPU: exercise tracing only (inductor on CPU takes minutes)
    mode = "reduce-overhead" if backend == "inductor" else None
    threads = None if cuda else 1
    cfg = load_shape_config(shape)
    log(f"torch {torch.__version__}, transformers {__import__('transformers').__version__}, "
        f"{torch.cuda.get_device_name(0) if cuda else 'cpu'}; {shape} {dtype_name} sdpa; compile {backend}")
    t0 = time.time()
    base = build_random_model(cfg, dtype, device, "sdpa", seed=0)
    log(f"random base model built in {time.time() - t0:.1f}s")
    summary = []
    decode_batches = [8, 64] if cuda else [2]
    text_tokens = [64, 128, 256, 512] if cuda else [16, 32]

    if "decode" not in skip:
        rep = measure_decode(shape, ["lf"], DecodeSettings(
            batch_sizes=decode_batches, text_tokens=[128 if cuda else 16], new_tokens=16 if cuda else 4,
            warmup=3, repeats=10, compile="compiled", compile_backend=backend, compile_mode=mode,
            dtype=dtype_name, device=args.device, threads=threads, attn="sdpa"), progress=False, model=base)
        write_json_atomic(out / "decode.json", rep)
        log("decode\n" + format_decode_table(rep))
        for r in rep["results"]:
            if r["method"] == "lf":
                key = f"decode_compiled_b{r['batch']}"
                summary.append(_line(f"LF/vanilla decode per token, compiled, batch {r['batch']}, {r['text_tokens']} text",
                                     r["ratio_to_vanilla"], r["ratio_to_vanilla_p25_p75"], TARGETS.get(key), "<=",
                                     extra=f"analytic {r['analytic_decode_ratio']:.3f}; LF {r['tokens_per_s']['median']:.0f} tok/s"))

    if "prefill" not in skip:
        rep = measure_latency(shape, ["lf", "kv"], LatencySettings(
            text_tokens=text_tokens, batch_sizes=[1, 8] if cuda else [1, 2], new_tokens=0, warmup=3, repeats=10,
            dtype=dtype_name, device=args.device, threads=threads, attn="sdpa", measure_memory=False),
            progress=False, model=base)
        write_json_atomic(out / "prefill.json", rep)
        log("prefill\n" + format_latency_table(rep))
        for r in rep["results"]:
            if r["method"] == "vanilla":
                continue
            ratio, iqr = r["ratios"]["prefill"], r["ratios"]["prefill_p25_p75"]
            share = r.get("measured_share_of_analytic_saving")
            what = f"{r['method']}/vanilla prefill, batch {r['batch']}, {r['text_tokens']} text"
            extra = f"analytic {r['analytic']['prefill_whole_ratio']:.3f}; share of saving {_pct(share)}"
            if r["method"] == "lf" and r["batch"] == 1 and r["text_tokens"] == (128 if cuda else 16):
                summary.append(_line(what, ratio, iqr, TARGETS["prefill_b1_t128"], "<=", extra))
            elif r["batch"] > 1:
                key = "prefill_b8_share" if r["method"] == "lf" else "kv_prefill_b8_share"
                summary.append(_line(what + " (share of analytic saving)", share, None, TARGETS[key], ">=",
                                     f"ratio {ratio:.3f} (IQR {iqr[0]:.3f}-{iqr[1]:.3f}); {extra}"))
            else:
                summary.append(_line(what, ratio, iqr, None, "", extra))

    if "prefill-compiled" not in skip:  # batch 1, where eager prefill is bound by kernel launches
        try:  # the first run of compile_prefill on a GPU: a failure here must not cost the parts after it
            rep = measure_latency(shape, ["lf", "kv"], LatencySettings(
                text_tokens=[128, 512] if cuda else [16], batch_sizes=[1], new_tokens=0, warmup=3, repeats=10,
                dtype=dtype_name, device=args.device, threads=threads, attn="sdpa", measure_memory=False,
                compile="both", compile_backend=backend, compile_mode=mode), progress=False, model=base)
        except Exception as err:  # noqa: BLE001 - reported in the summary, the run goes on
            log(f"prefill, compiled: FAILED {type(err).__name__}: {err}")
            summary.append(f"compiled prefill: FAILED ({type(err).__name__}: {str(err).splitlines()[0][:200]})")
        else:
            write_json_atomic(out / "prefill_compiled.json", rep)
            log("prefill, compiled\n" + format_latency_table(rep))
            for r in rep["results"]:
                if not r["compiled"]:
                    continue
                what = f"{r['label']}/vanilla [compiled] prefill, batch 1, {r['text_tokens']} text"
                extra = (f"analytic {r['analytic']['prefill_whole_ratio']:.3f}; compiled/eager "
                         f"{_num(r.get('compiled_over_eager'))}; compiles while timed {r['compiles_while_timed']}")
                at_target = r["method"] == "lf" and r["text_tokens"] == (128 if cuda else 16)
                summary.append(_line(what, r["ratios"]["prefill"], r["ratios"]["prefill_p25_p75"],
                                     TARGETS["prefill_b1_t128"] if at_target else None, "<=", extra))

    if "equality" not in skip:
        rep = equality(base, cfg, device, dtype, batch=8 if cuda else 2, text=128 if cuda else 16,
                       new_tokens=16 if cuda else 4, backend=backend, mode=mode)
        write_json_atomic(out / "equality.json", rep)
        for variant, r in rep["results"].items():
            summary.append(f"{variant}: compiled == eager decode (static cache), token for token: "
                           f"{r['compiled_tokens_equal_eager_static']} (max |logit diff| "
                           f"{r['max_abs_logit_diff_compiled_vs_static']:.3g}); static == dynamic cache: "
                           f"{r['static_tokens_equal_dynamic']} (max |logit diff| {r['max_abs_logit_diff_static_vs_dynamic']:.3g})")
        log("equality " + json.dumps(rep["results"]))

    if "kv" not in skip:
        text_cfg = cfg.text_config
        cmd = [sys.executable, str(Path(__file__).with_name("kv_attention_cost.py")), "--device", args.device,
               "--dtype", dtype_name, "--batch", "8" if cuda else "1", "--heads", str(text_cfg.num_attention_heads),
               "--head-dim", str(text_cfg.hidden_size // text_cfg.num_attention_heads),
               "--image", str(cfg.image_seq_length if cuda else 16)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        kv = json.loads(res.stdout)
        write_json_atomic(out / "kv_attention.json", kv)
        c = {name.split(" ")[0]: v["median_ms"] for name, v in kv["cases"].items()}  # case names carry notes after a space
        summary.append("kv attention at batch {b}: explicit mask {m:.3f} ms, split mask-free (what kv runs for one "
                       "shared image run) {sp:.3f} ms, mask-free same size {n:.3f} ms; merge by gather {g:.3f} ms, "
                       "by concatenation {cat:.3f} ms; image K/V projection {p:.3f} ms".format(
                           b=kv["batch"], m=c["sdpa_additive_mask"], sp=c["sdpa_split_mask_free"],
                           n=c["sdpa_no_mask_same_size"], g=c["kv_merge_cat_gather"], cat=c["kv_merge_cat"],
                           p=c["image_kv_projection"]))

    text = f"{shape} {dtype_name} sdpa on {torch.cuda.get_device_name(0) if cuda else 'cpu'}; compile backend {backend}\n"
    text += "\n".join(summary) + f"\ntotal {time.time() - t0:.0f}s\n"
    tmp = out / "summary.txt.tmp"
    tmp.write_text(text)
    tmp.replace(out / "summary.txt")
    print(text)
    return 0


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _line(what: str, value, iqr, target, op: str, extra: str = "") -> str:
    v = "n/a" if value is None else f"{value:.3f}"
    spread = f" (IQR {iqr[0]:.3f}-{iqr[1]:.3f})" if iqr else ""
    verdict = ""
    if target is not None and value is not None:
        ok = value <= target if op == "<=" else value >= target
        verdict = f"  target {op} {target}: {'met' if ok else 'NOT met'}"
    return f"{what}: {v}{spread}{verdict}; {extra}"


if __name__ == "__main__":
    sys.exit(main())
