"""``dpvr tiny build``: train the tiny LLaVA (the embedded default) from generated data."""

from __future__ import annotations

import sys
from dataclasses import replace

from dpvr.cli.help import hidden_alias


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("tiny", help="build the tiny offline LLaVA",
                              description="The tiny LLaVA shipped as dpvr's offline default.")
    sub = p.add_subparsers(dest="tiny_command", metavar="ACTION")
    b = sub.add_parser(
        "build", help="data -> tokenizer -> CLIP pretraining -> align -> instruct -> focus -> eval -> checkpoint",
        description=("Builds the tiny LLaVA from nothing: generates the data (dpvr data generate), trains a "
                     "tokenizer, pretrains the CLIP vision tower, aligns the projector, instruction-tunes the "
                     "language model, runs the focus curriculum in rounds until every benchmark family clears a validation gate (held-out "
                     "items, 15 points above the blank-image answers; the build fails naming the families if one "
                     "never does), scores the benchmark with dpvr eval's code, and writes a stock checkpoint with "
                     "build.json (command, seed, versions, gates, accuracy, file hashes) and logs/ (loss curves, "
                     "predictions). One progress bar per stage; --quiet hides them. The shipped checkpoint is this "
                     "command's output with the defaults (see docs/embedded.md for its time and machine)."))
    b.add_argument("--out", required=True, help="output folder (checkpoint, build.json, losses, data/)")
    b.add_argument("--seed", type=int, default=0, help="random seed; same seed -> same weights on one machine")
    b.add_argument("--quick", action="store_true", help="a smoke-test version (tiny data, few steps)")
    b.add_argument("--no-focus", action="store_true",
                   help="skip stage (d), the focus curriculum after instruction tuning (single-family stages that "
                        "lift POPE, spatial and multiple choice off chance; the shipped checkpoint has it)")
    b.add_argument("--data", default=None, help="use this generated dataset instead of generating one")
    b.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: 2, as the shipped build; weights are reproducible for a fixed "
                        "count on one machine, and another count is another numerical path)")
    b.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    hidden_alias(b, "--no-progress", "quiet", action="store_true")
    b.set_defaults(func=_build)
    e = sub.add_parser("export", help="copy a build's checkpoint into the package (the embedded default)",
                       description="Copies the checkpoint files of a `dpvr tiny build` output folder into the "
                                   "installed package, where dpvr.embedded loads them from.")
    e.add_argument("build_dir", help="output folder of `dpvr tiny build`")
    e.add_argument("--dest", default=None, help="destination (default: the dpvr.embedded checkpoint folder)")
    e.set_defaults(func=_export)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _command(args) -> list[str]:
    cmd = ["dpvr", "tiny", "build", "--out", str(args.out), "--seed", str(args.seed)]
    cmd += ["--quick"] * args.quick + ["--no-focus"] * args.no_focus + (["--data", str(args.data)] if args.data else [])
    cmd += ["--threads", str(args.threads)] if args.threads is not None else []
    return cmd + ["--overwrite"] * args.overwrite + ["--quiet"] * args.quiet


def _build(args) -> int:
    from dpvr.cli import UserError
    from dpvr.tiny.build import BuildConfig, build
    from dpvr.tiny.gates import GateError
    from dpvr.tiny.report import format_results

    cfg = (BuildConfig.quick if args.quick else BuildConfig.full)(args.seed, focus=not args.no_focus)
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be >= 1, got {args.threads}")
        cfg = replace(cfg, threads=args.threads)
    try:
        info = build(args.out, cfg, data_dir=args.data, overwrite=args.overwrite, progress=not args.quiet,
                     command=_command(args))
    except FileExistsError as err:
        raise UserError(str(err)) from None
    except GateError as err:
        print(f"dpvr tiny build: {err}", file=sys.stderr)
        return 1
    print(format_results(info["results"]))
    print(f"checkpoint: {args.out} ({info['wall_time_s']:.0f} s)")
    return 0


def _export(args) -> int:
    from dpvr import embedded
    from dpvr.tiny.build import export_checkpoint

    dest = args.dest or embedded.PATH
    names = export_checkpoint(args.build_dir, dest)
    print(f"copied {len(names)} files to {dest}")
    return 0
