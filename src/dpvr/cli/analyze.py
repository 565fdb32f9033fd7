"""``dpvr analyze``: where do vision tokens saturate, and which split should DPVR use?

    dpvr analyze                                    # embedded tiny model + its generated data
    dpvr analyze --model DIR --data train.json --image-folder images/ --num-samples 200 --out runs/analyze
    dpvr analyze --adapter runs/train/lf            # + mechanism checks of a trained adapter

Writes ``saturation.json`` and ``saturation.png`` to ``--out`` and prints the suggested split with
the reasons. A thin layer over :func:`dpvr.analysis.run_analysis`.
"""

from __future__ import annotations

import argparse

from dpvr.cli.help import hidden_alias


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "analyze", help="saturation analysis: per-layer curves, transitions and a suggested split",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="LLaVA-style model directory or hub id (default: embedded tiny model)")
    p.add_argument("--data", default=None, help="LLaVA conversation JSON (default: the embedded generated train.json)")
    p.add_argument("--image-folder", default=None, help="folder the records' image paths are relative to "
                   "(default: the data file's folder)")
    p.add_argument("--num-samples", type=int, default=64, help="samples with images to analyse (default 64)")
    p.add_argument("--batch-size", type=int, default=4, help="samples per forward pass (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random sample order (default 0)")
    p.add_argument("--out", default="runs/analyze", help="output folder (default runs/analyze)")
    p.add_argument("--adapter", default=None, help="trained DPVR adapter directory: add the mechanism checks")
    p.add_argument("--share", type=float, default=0.9,
                   help="share of a curve's change that marks its transition layer (default 0.9)")
    p.add_argument("--collapse-drop", type=float, default=0.5,
                   help="text→image attention counts as collapsed only if it falls at least this share below "
                   "its peak (default 0.5)")
    p.add_argument("--lens-positions", type=int, default=64,
                   help="image and answer positions per sample read by the logit lens, each evenly spaced; "
                   "0 = all (default 64)")
    p.add_argument("--num-fusion-layers", type=int, default=1, help="K, for the allowed split range (default 1)")
    p.add_argument("--min-split", type=int, default=None,
                   help="smallest split to suggest (default: ceil(N/2), the deep half)")
    p.add_argument("--attn-implementation", default="sdpa", choices=["sdpa", "eager"])
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--no-plot", action="store_true", help="write only saturation.json")
    p.add_argument("--allow-outside-paths", action="store_true",
                   help="let image paths resolve outside --image-folder (../, absolute paths, symlinks out)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    hidden_alias(p, "--no-progress", "quiet", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dpvr.analysis import run_analysis
    from dpvr.cli import UserError

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 0 < args.share <= 1:
        raise UserError(f"--share must be in (0, 1], got {args.share}")
    if not 0 <= args.collapse_drop < 1:
        raise UserError(f"--collapse-drop must be in [0, 1), got {args.collapse_drop}")
    if args.lens_positions < 0:
        raise UserError(f"--lens-positions must be >= 0, got {args.lens_positions}")
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    if args.quiet:
        hf_logging.disable_progress_bar()
    try:
        result, paths = run_analysis(
            args.model, args.data, args.image_folder, args.out, num_samples=args.num_samples,
            batch_size=args.batch_size, seed=args.seed, adapter=args.adapter, share=args.share,
            collapse_min_drop=args.collapse_drop,
            lens_positions=args.lens_positions, num_fusion_layers=args.num_fusion_layers,
            min_split=args.min_split, attn_implementation=args.attn_implementation, dtype=args.dtype,
            device=args.device, plot=not args.no_plot, progress=not args.quiet,
            allow_outside_paths=args.allow_outside_paths)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    print(format_report(result))
    for kind, path in paths.items():
        print(f"wrote {path}")
    return 0


def format_report(result) -> str:
    lines = [f"{result.samples.get('used', 0)} samples, {result.num_layers} layers "
             f"(transition = {result.settings.get('share', 0.9):.0%} of a curve's change)", ""]
    lines.append(f"{'curve':34s} transition layer")
    for key, t in result.transitions.items():
        layer = "-" if t.get("layer") is None else str(t["layer"])
        lines.append(f"  {t.get('name', key):32s} {layer}")
    lines += ["", f"Suggested split: {result.suggested_split}", "", result.explanation]
    if result.mechanism_summary:
        lines += ["", "Mechanism checks (adapter):", result.mechanism_summary]
    return "\n".join(lines)
