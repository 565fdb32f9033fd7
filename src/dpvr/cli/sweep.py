"""``dpvr sweep``: train and evaluate every point of a grid, several seeds each; table and plots."""

from __future__ import annotations

import argparse

from dpvr.cli.help import ListAction, hidden_alias
from dpvr.config import DPVR_VARIANTS


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from err


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(t) for t in text.split("/"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--shard takes I/N (e.g. 0/4), got {text!r}") from err
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard {text}: need 0 <= I < N")
    return i, n


def add_parser(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="ablations: train + evaluate every point of a grid (split, K, D, LR), several seeds",
        description=(
            "Trains every grid point with the same data and recipe (dpvr train) and evaluates it on the benchmark "
            "families (dpvr eval), for each seed. Finished points are kept in OUT/points/ and never retrained, so an "
            "interrupted sweep resumes; several processes may share OUT (use --shard I/N or let the locks spread them). "
            "Writes OUT/table.{json,csv,md} (mean ± std over seeds) and plots of accuracy vs split, K, D and FLOPs."
        ),
        epilog=(
            "Grid axes: split=4,5,6  num_fusion_layers=1,2  side_depth=1,2  lr=1e-3,2e-3  "
            "fusion_layers=[s+2,N-1];[N-2,N-1]  (s = the point's split, N = layers; semicolons between lists)  "
            "warmup_ratio=0.03,0.1  distill=off,on  distill_kl_weight=1  distill_feature_weight=0,1 "
            "(distilled points share the teacher's targets in OUT/teacher-targets)."
        ),
    )
    p.add_argument("--grid", nargs="+", required=True, metavar="AXIS=VALUES", help="grid axes (see below)")
    p.add_argument("--variants", default="lf", help="comma-separated DPVR variants (lf, pc, kv, ideal)")
    p.add_argument("--seeds", type=_ints, default=[0], help="comma-separated seeds")
    p.add_argument("--out", required=True, help="output folder (shared by all processes of the sweep)")
    p.add_argument("--model", help="LLaVA model folder (default: the embedded tiny LLaVA)")
    p.add_argument("--data", help="training data (default: the embedded train.json)")
    p.add_argument("--image-folder", help="image folder of --data (default: its folder)")
    p.add_argument("--benchmark", help="benchmark folder (default: the embedded benchmark)")
    p.add_argument("--families", action=ListAction, metavar="FAMILY",
                   help="benchmark families, space- or comma-separated (default: all)")
    p.add_argument("--limit", type=int, default=50, help="questions per benchmark family per point")
    hidden_alias(p, "--eval-limit", "limit", type=int)
    p.add_argument("--split", type=int, help="split when the grid has no split axis")
    p.add_argument("--max-steps", type=int, default=200, help="training steps per point")
    p.add_argument("--batch-size", type=int, default=8, help="training batch size")
    p.add_argument("--lr", type=float, help="learning rate when the grid has no lr axis (default: the variant's)")
    p.add_argument("--max-samples", type=int, help="train on at most this many records")
    p.add_argument("--analysis", help="saturation.json of `dpvr analyze`, to mark the suggested split on the plot")
    p.add_argument("--shard", type=_shard, default=(0, 1),
                   help="run only every N-th point starting at I, as I/N (default: 0/1, every point)")
    p.add_argument("--no-reference", action="store_true",
                   help="skip evaluating the untrained base model (the 'vanilla' line of the table and plots; "
                        "computed once per output folder and reused)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    hidden_alias(p, "--no-progress", "quiet", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from dpvr.sweep import SweepSettings, expand_grid, parse_grid, reference_accuracy, run_sweep
    from dpvr.sweep.report import write_report
    from dpvr.validation import AnalysisFile, read_json, validate

    grid = parse_grid(args.grid)
    suggested = None
    if args.analysis:  # read before any training: a bad file is reported at once
        suggested = validate(AnalysisFile, read_json(args.analysis, "analysis file"), args.analysis).suggested_split
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in DPVR_VARIANTS]
    if bad:
        raise ValueError(f"--variants: {bad} are not trainable DPVR variants (lf, pc, kv, ideal)")
    points = expand_grid(grid, variants, args.seeds)
    settings = SweepSettings(
        out=args.out, model=args.model, data=args.data, image_folder=args.image_folder, benchmark=args.benchmark,
        families=args.families, eval_limit=args.limit, split=args.split, max_steps=args.max_steps, batch_size=args.batch_size,
        lr=args.lr, max_samples=args.max_samples, shard=args.shard,
    )
    print(f"dpvr sweep: {len(points)} runs ({len(points) // len(args.seeds)} points x {len(args.seeds)} seeds)")
    records = run_sweep(points, settings, progress=not args.quiet)
    reference = None if args.no_reference else reference_accuracy(settings)
    report = write_report(records, args.out, suggested, reference)
    print(report["markdown"])
    missing = len(points) - len(records)
    if missing:
        print(f"{missing} run(s) not finished yet (another process, or --shard); rerun to complete the table")
    return 0
