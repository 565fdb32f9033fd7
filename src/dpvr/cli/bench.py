"""``dpvr bench``: efficiency of DPVR and its peers (SPEC §9) — analytic FLOPs, measured latency, training step.

    dpvr bench flops --config llava-1.5-7b --split 18 --text-tokens 64,128,256,512
    dpvr bench flops --shape qwen2.5-vl-7b --layout video --methods lf,fastv-50,lf+fastv-50
    dpvr bench flops --shape all --text-tokens 128      # LF's saving on every bundled shape
    dpvr bench latency --config cpu-mid --threads 2 --text-tokens 64,128 --out runs/bench/cpu-mid
    dpvr bench latency --config llava-1.5-7b --device cuda --dtype bf16 --batch-sizes 1,8
    dpvr bench latency --config llava-1.5-7b --device cuda --dtype bf16 --methods lf,kv --compile both
    dpvr bench latency --decode --config llava-1.5-7b --device cuda --batch-sizes 1,8,32,64 --repeats 10 --warmup 3
    dpvr bench train --config cpu-mid --methods lf,pc,kv,lora16,full
    dpvr bench serve --config cpu-mid --methods vanilla,lf        (in the serve venv: vLLM)

``--config`` (or ``--shape``) takes a bundled shape (llava-1.5-7b, llava-1.5-13b, llava-v1.6-mistral-7b,
llava-onevision-qwen2-7b, qwen2.5-vl-7b, qwen3-vl-8b, gemma-3-4b, internvl3-8b, smolvlm-2.2b,
mistral-small-3.1-24b, cpu-mid, tiny), a ``config.json`` or a model directory; models are built with
random weights, nothing is downloaded. Each bundled shape has its default prompt layout (an image,
or a video with ``--layout video``) with visual tokens counted by its family's own rule. Each mode prints
a table and writes ``<mode>.json`` and ``<mode>.png`` to ``--out``. Thin over
:mod:`dpvr.efficiency` (``flops.analytic_report``, ``latency.measure_latency``, ``train.measure_training``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from dpvr.cli.help import hidden_alias
from dpvr.config import DPVR_VARIANTS

FLOPS_METHODS = "lf,pc,kv,ideal,fastv,vtw,lf+fastv"


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _name_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _routing_args(p: argparse.ArgumentParser, methods_default: str, methods_help: str) -> None:
    p.add_argument("--config", "--shape", dest="config", default=None,
                   help="bundled shape name, config.json or model directory (default: llava-1.5-7b for flops, "
                        "cpu-mid on CPU / llava-1.5-7b on CUDA for latency and train); flops also takes 'all'")
    p.add_argument("--layout", default=None,
                   help="the shape's prompt layout: image or video where the shape has one (default: its first)")
    p.add_argument("--methods", type=_name_list, default=_name_list(methods_default),
                   help=f"comma-separated methods; vanilla is always included (default {methods_default}). {methods_help}")
    p.add_argument("--split", type=int, default=None, help="split layer s (default: the shape's usual split)")
    p.add_argument("--num-fusion-layers", type=int, default=None, help="lf: the last K layers fuse (default 1)")
    p.add_argument("--fusion-layers", type=_int_list, default=None, help="lf: explicit fusion layers, e.g. 24,31")
    p.add_argument("--side-depth", type=int, default=1, help="D, side-branch layers (default 1)")


def _peer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fastv-k", type=int, default=2, help="FastV: layers k.. see only the kept image tokens (default 2)")
    p.add_argument("--fastv-ratio", type=float, default=0.5, help="FastV: share of image tokens kept (default 0.5)")
    p.add_argument("--vtw-k", type=int, default=None, help="VTW: image tokens withdrawn from layer k on (default: the split)")


def _measure_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, float32 on CPU), float32, bfloat16, float16")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads, fixed for the run (default 2)")
    p.add_argument("--clock", choices=["wall", "process"], default="wall",
                   help="CPU timing: wall (perf_counter, default) or process (CPU time of this process; for a "
                        "shared machine, with --threads 1)")
    p.add_argument("--attn-implementation", default="sdpa", choices=["sdpa", "eager"])
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    p.add_argument("--system-tokens", type=int, default=None,
                   help="tokens before the first image (default: the shape's; 35 for LLaVA-1.5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs (default 0)")
    p.add_argument("--no-memory", action="store_true", help="skip the (untimed) peak-memory pass")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    hidden_alias(p, "--no-progress", "quiet", action="store_true")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("bench", help="efficiency: analytic FLOPs, measured latency/memory, training step",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = p.add_subparsers(dest="bench_mode", metavar="MODE")

    f = modes.add_parser("flops", help="analytic prefill/decode FLOPs and KV-cache bytes of every method",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _routing_args(f, FLOPS_METHODS, "Known: vanilla, lf, pc, kv, ideal, fastv, vtw, lf+fastv; "
                  "fastv-NN and lf+fastv-NN keep NN %% of the image tokens (e.g. lf+fastv-50).")
    _peer_args(f)
    f.add_argument("--text-tokens", type=_int_list, default=[64, 128, 256, 512],
                   help="text lengths, comma-separated (default 64,128,256,512)")
    f.add_argument("--system-tokens", type=int, default=None,
                   help="tokens before the first image (default: the shape's; 35 for LLaVA-1.5)")
    f.add_argument("--num-images", type=int, default=1, help="images per prompt (default 1)")
    f.add_argument("--batch-size", type=int, default=1, help="prompts per batch (default 1)")
    f.add_argument("--new-tokens", type=int, default=1, help="decode figures: mean over this many new tokens (default 1)")
    f.add_argument("--dtype", default="bf16", help="dtype of the KV cache for its byte count (default bf16)")
    f.add_argument("--lm-head", choices=["last", "all"], default="last",
                   help="positions lm_head runs on at prefill: last (generation, default) or all (training)")
    f.add_argument("--out", default="runs/bench", help="output folder for flops.json/flops.png (default runs/bench)")
    f.add_argument("--no-plot", action="store_true", help="write only flops.json")
    f.set_defaults(func=run_flops)

    lat = modes.add_parser("latency", help="measured prefill, cached decode, peak memory, KV-cache bytes vs vanilla",
                           description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _routing_args(lat, "lf,pc,kv,ideal", "Known: vanilla, lf, pc, kv, ideal, fastv, vtw, lf+fastv; fastv-NN and "
                  "lf+fastv-NN keep NN %% of the image tokens (e.g. lf+fastv-50).")
    _peer_args(lat)
    lat.add_argument("--text-tokens", type=_int_list, default=[64, 128], help="text lengths (default 64,128)")
    lat.add_argument("--batch-sizes", type=_int_list, default=[1], help="batch sizes (default 1)")
    lat.add_argument("--new-tokens", type=int, default=8, help="cached decode steps per run (default 8; 0 = none)")
    lat.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    lat.add_argument("--out", default="runs/bench", help="output folder for latency.json/png (default runs/bench)")
    lat.add_argument("--no-plot", action="store_true", help="write only latency.json")
    lat.add_argument("--decode", action="store_true",
                     help="decode throughput instead: static per-layer caches, ms/token and tokens/s with their "
                          "spread, eager and compiled (writes latency-decode.json; --repeats >= 10, --warmup >= 3)")
    lat.add_argument("--compile", choices=["eager", "compiled", "both"], default=None,
                     help="time eager, torch.compile'd (the decode step with --decode, else the prefill: "
                          "DPVRModel.compile_prefill) or both (default: both with --decode, eager for prefill)")
    lat.add_argument("--compile-mode", default=None,
                     help="torch.compile mode (when not given: reduce-overhead on CUDA, torch's own on CPU)")
    _measure_args(lat)
    lat.set_defaults(func=run_latency)

    tr = modes.add_parser("train", help="training-step time and peak memory: DPVR variants vs LoRA and full FT",
                          description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _routing_args(tr, "lf,pc,kv,lora16,full", "Known: lf, pc, kv, ideal, lora<R> (e.g. lora16, lora64), full.")
    tr.add_argument("--text-tokens", type=int, default=128, help="text length (default 128; labels on its last half)")
    tr.add_argument("--batch-size", type=int, default=1, help="batch size (default 1)")
    tr.add_argument("--repeats", type=int, default=3, help="timed rounds (default 3)")
    tr.add_argument("--out", default="runs/bench", help="output folder for train.json/train.png (default runs/bench)")
    tr.add_argument("--no-plot", action="store_true", help="write only train.json")
    _measure_args(tr)
    tr.set_defaults(func=run_train)

    sv = modes.add_parser("serve", help="vLLM serving (serve venv): throughput and time to first token vs vanilla",
                          description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sv.add_argument("--config", default="cpu-mid", help="bundled shape or config.json (default cpu-mid)")
    sv.add_argument("--methods", type=_name_list, default=["vanilla", "lf"],
                    help="comma-separated: vanilla, lf, pc, kv (default vanilla,lf)")
    sv.add_argument("--split", type=int, default=None, help="split layer s (default: the shape's usual split)")
    sv.add_argument("--num-prompts", type=int, default=8, help="prompts submitted together (default 8)")
    sv.add_argument("--system-tokens", type=int, default=32, help="tokens before the image (default 32)")
    sv.add_argument("--text-tokens", type=int, default=64, help="tokens after the image (default 64)")
    sv.add_argument("--max-tokens", type=int, default=16, help="tokens generated per prompt (default 16)")
    sv.add_argument("--ttft-requests", type=int, default=3, help="single requests timed for TTFT (default 3)")
    sv.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    sv.add_argument("--seed", type=int, default=0, help="seed of the random weights and prompts (default 0)")
    sv.add_argument("--warmup", type=int, default=1, help="untimed rounds per method first (default 1)")
    sv.add_argument("--repeats", type=int, default=5,
                    help="timed rounds, methods interleaved; ratios are their median with IQR (default 5)")
    sv.add_argument("--work-dir", default=None, help="where the random model and adapters are kept (default OUT/models)")
    sv.add_argument("--out", default="runs/bench", help="output folder for serve.json (default runs/bench)")
    sv.set_defaults(func=run_serve)

    p.set_defaults(func=lambda args: _no_mode(p))


def _no_mode(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _device_and_dtype(args) -> tuple[str, str]:
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = args.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    return device, dtype


def _default_config(args, device: str) -> str:
    return args.config or ("llava-1.5-7b" if device.startswith("cuda") else "cpu-mid")


def _write(out: str, stem: str, report: dict, plot_fn, no_plot: bool) -> list[Path]:
    from dpvr.efficiency.report import write_json_atomic

    paths = [write_json_atomic(Path(out) / f"{stem}.json", report)]
    if not no_plot:
        paths.append(plot_fn(report, Path(out) / f"{stem}.png"))
    return paths


def run_flops(args: argparse.Namespace) -> int:
    from dpvr.outlock import check_out

    check_out(args.out)  # a file or a read-only folder: one line before any work

    import torch

    from dpvr.cli import UserError
    from dpvr.efficiency.flops import ShapeDims, analytic_report, format_table
    from dpvr.efficiency.latency import DTYPES
    from dpvr.efficiency.methods import make_methods
    from dpvr.efficiency.plots import plot_flops
    from dpvr.shapes import default_split, load_shape_config, parameter_counts
    from dpvr.shapes.layout import prompt_layout

    if args.dtype not in DTYPES:
        raise UserError(f"unknown --dtype {args.dtype!r}: choose one of {', '.join(DTYPES)}")
    for name in ("batch_size", "num_images", "new_tokens"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    if args.system_tokens is not None and args.system_tokens < 0:
        raise UserError("--system-tokens must be >= 0")
    if args.config == "all":
        return _run_flops_all(args)
    cfg = load_shape_config(args.config or "llava-1.5-7b")
    layout = prompt_layout(cfg, args.layout, system_tokens=args.system_tokens)
    if args.num_images > 1:
        layout = prompt_layout(cfg, layout.name, visuals=list(layout.visuals) * args.num_images,
                               system_tokens=layout.system_tokens)
    dims = ShapeDims.from_config(cfg, layout)
    split = args.split if args.split is not None else default_split(cfg)
    methods = make_methods(args.methods, dims.num_layers, split, args.num_fusion_layers, args.fusion_layers,
                           args.side_depth, args.fastv_k, args.fastv_ratio, args.vtw_k)
    report = analytic_report(
        dims, methods, text_tokens=args.text_tokens, batch=args.batch_size, new_tokens=args.new_tokens,
        dtype_bytes=torch.empty((), dtype=DTYPES[args.dtype]).element_size(), lm_head_positions=args.lm_head,
        layout=layout)
    routed = next((m.dpvr for m in methods if m.name in (*DPVR_VARIANTS, "lf+fastv")), None)
    report["parameters"] = parameter_counts(cfg, routed)
    inputs = ", ".join(f"{v.kind} {v.width}x{v.height}" + (f", {v.frames} frames" if v.kind == "video" else "")
                       for v in layout.visuals)
    print(f"{dims.name} ({cfg.model_type}): {dims.num_layers} layers, split {split}; {layout.name} layout: {inputs} -> "
          f"{layout.visual_tokens} visual tokens (+{layout.marker_tokens} marker text tokens), "
          f"{layout.system_tokens} system tokens, batch {args.batch_size}")
    print(f"parameters: {report['parameters']['total']:,d} in the base model; side branch "
          f"(D={args.side_depth}) {report['parameters']['side_branch']:,d}")
    print(format_table(report["rows"]))
    print("LM = decoder layers + side branch; whole = LM + vision tower + projector + lm_head "
          f"({args.lm_head} position{'s' if args.lm_head == 'all' else ''}); vision side: analytic (same for every "
          f"method); decode = mean over {args.new_tokens} new token(s); KV cache in {args.dtype}.")
    for path in _write(args.out, "flops", report, plot_flops, args.no_plot):
        print(f"wrote {path}")
    return 0


def _run_flops_all(args: argparse.Namespace) -> int:
    from dpvr.efficiency.report import write_json_atomic
    from dpvr.efficiency.shapes_table import DEFAULT_TABLE_METHODS, format_shape_table, shape_rows

    methods = [m for m in args.methods if m != "vanilla"] or ["lf"]
    if args.methods == _name_list(FLOPS_METHODS):  # not chosen: LF and LF+FastV, as the README table
        methods = list(DEFAULT_TABLE_METHODS)
    rows = shape_rows(text_tokens=args.text_tokens, methods=methods, fastv_k=args.fastv_k)
    print(format_shape_table(rows))
    print("savings = 1 - method / vanilla prefill FLOPs at the shape's usual split s (of N layers); LM = decoder "
          "layers + side branch, whole = + vision tower, projector, lm_head; share = visual tokens / prompt tokens.")
    path = write_json_atomic(Path(args.out) / "flops-shapes.json", {"kind": "flops-shapes", "methods": methods,
                                                                    "text_tokens": args.text_tokens, "rows": rows})
    print(f"wrote {path}")
    return 0


def run_decode(args: argparse.Namespace) -> int:
    from dpvr.cli import UserError
    from dpvr.efficiency.decode import DecodeSettings, format_decode_table, measure_decode
    from dpvr.efficiency.noise import assess
    from dpvr.efficiency.report import write_json_atomic

    device, dtype = _device_and_dtype(args)
    try:
        settings = DecodeSettings(
            batch_sizes=args.batch_sizes, text_tokens=args.text_tokens, new_tokens=args.new_tokens,
            system_tokens=args.system_tokens, layout=args.layout, warmup=args.warmup, repeats=args.repeats,
            compile=args.compile or "both",
            compile_mode=args.compile_mode, dtype=dtype, device=device, threads=args.threads,
            attn=args.attn_implementation, seed=args.seed, clock=args.clock, split=args.split,
            num_fusion_layers=args.num_fusion_layers, fusion_layers=args.fusion_layers, side_depth=args.side_depth,
            fastv_k=args.fastv_k, fastv_ratio=args.fastv_ratio, vtw_k=args.vtw_k)
    except ValueError as err:
        raise UserError(f"{err} (dpvr bench latency --decode)") from None
    report = measure_decode(_default_config(args, device), args.methods, settings, progress=not args.quiet)
    print(f"{report['shape']} {dtype} decode on {report['machine'].get('gpu') or report['machine'].get('cpu_model', device)}; "
          f"timing: {report['timing_method']}; compile mode: {report['settings']['compile_mode']}")
    print(format_decode_table(report))
    print("ms/token and tokens/s: medians over rounds (IQR = p75 - p25 of ms/token); ratio: paired median against "
          "vanilla with the same compile setting; cmp/eager: compiled over eager, paired.")
    report["noise"] = assess(report)
    if report["noise"]["noisy"]:
        print("WARNING: decode ratios too noisy to read: " + "; ".join(report["noise"]["reasons"])
              + ". Rerun on an idle machine (or with --clock process --threads 1 on a shared one).")
    print(f"wrote {write_json_atomic(Path(args.out) / 'latency-decode.json', report)}")
    return 0


def run_latency(args: argparse.Namespace) -> int:
    from dpvr.outlock import check_out

    check_out(args.out)  # a file or a read-only folder: one line before any work

    from dpvr.efficiency.latency import LatencySettings, format_latency_table, measure_latency
    if getattr(args, "decode", False):
        return run_decode(args)
    from dpvr.efficiency.noise import assess
    from dpvr.efficiency.plots import plot_latency

    device, dtype = _device_and_dtype(args)
    settings = LatencySettings(
        text_tokens=args.text_tokens, batch_sizes=args.batch_sizes, new_tokens=args.new_tokens,
        system_tokens=args.system_tokens, layout=args.layout, warmup=args.warmup, repeats=args.repeats, dtype=dtype,
        device=device, threads=args.threads, attn=args.attn_implementation, seed=args.seed,
        measure_memory=not args.no_memory,
        clock=args.clock, split=args.split, num_fusion_layers=args.num_fusion_layers,
        fusion_layers=args.fusion_layers, side_depth=args.side_depth, fastv_k=args.fastv_k,
        fastv_ratio=args.fastv_ratio, vtw_k=args.vtw_k, compile=args.compile or "eager", compile_mode=args.compile_mode)
    if settings.compile != "eager":
        # dynamo's one-time advice to capture Tensor.item() in the graph (40 lines with a stack): the compiled
        # prefill breaks at the prompt-layout reads by design (DPVRModel.compile_prefill)
        logging.getLogger("torch._dynamo.variables.tensor").setLevel(logging.ERROR)
    report = measure_latency(_default_config(args, device), args.methods, settings, progress=not args.quiet)
    print(f"{report['shape']} {dtype} on {report['machine'].get('gpu') or report['machine'].get('cpu_model', device)}; "
          f"timing: {report['timing_method']}; memory: {report['memory_method']}"
          + (f"; compile mode: {report['settings']['compile_mode']}" if settings.compile != "eager" else ""))
    print(format_latency_table(report))
    print("ratios are paired medians against vanilla (with the same compile setting) from the same rounds; 'analytic' "
          "is the whole-model ratio; 'share' = measured prefill saving / analytic saving; cmp/eager: compiled prefill "
          "over eager, paired.")
    report["noise"] = assess(report)
    if report["noise"]["noisy"]:
        print("WARNING: latency ratios too noisy to read: " + "; ".join(report["noise"]["reasons"])
              + ". Rerun on an idle machine (or with --clock process --threads 1 on a shared one).")
    for path in _write(args.out, "latency", report, plot_latency, args.no_plot):
        print(f"wrote {path}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from dpvr.outlock import check_out

    check_out(args.out)  # a file or a read-only folder: one line before any work

    from dpvr.efficiency.plots import plot_train
    from dpvr.efficiency.train import TrainSettings, format_train_table, measure_training

    device, dtype = _device_and_dtype(args)
    settings = TrainSettings(
        text_tokens=args.text_tokens, batch_size=args.batch_size,
        system_tokens=35 if args.system_tokens is None else args.system_tokens,
        warmup=args.warmup, repeats=args.repeats, dtype=dtype, device=device, threads=args.threads,
        attn=args.attn_implementation, seed=args.seed, measure_memory=not args.no_memory, clock=args.clock,
        split=args.split, num_fusion_layers=args.num_fusion_layers, fusion_layers=args.fusion_layers,
        side_depth=args.side_depth)
    report = measure_training(_default_config(args, device), args.methods, settings, progress=not args.quiet)
    print(f"{report['shape']} {dtype}; timing: {report['timing_method']}; memory: {report['memory_method']}")
    print(format_train_table(report))
    for path in _write(args.out, "train", report, plot_train, args.no_plot):
        print(f"wrote {path}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise ValueError("vLLM is not installed in this environment: run `dpvr bench serve` from the serve venv "
                         "(bash scripts/setup_serve.sh; default /tmp/dpvr-serve-venv/bin/dpvr)")
    from dpvr.io import write_json_atomic
    from dpvr.serve.bench import ServeBenchSettings, measure_serving, table

    settings = ServeBenchSettings(
        config=args.config, methods=args.methods, split=args.split, num_prompts=args.num_prompts,
        system_tokens=args.system_tokens, text_tokens=args.text_tokens, max_tokens=args.max_tokens,
        ttft_requests=args.ttft_requests, threads=args.threads, seed=args.seed, warmup=args.warmup,
        repeats=args.repeats)
    out = Path(args.out)
    report = measure_serving(settings, Path(args.work_dir) if args.work_dir else out / "models")
    print(f"{args.config} in vLLM {report['vllm']} (eager, fp32, {args.threads} threads, {report['machine']['cpus']} CPUs); "
          f"prompt {report['methods']['vanilla']['prompt_tokens']} tokens, split {report['settings']['split']}")
    print(table(report))
    print(f"wrote {write_json_atomic(out / 'serve.json', report)}")
    return 0
