"""``dpvr data generate``: write the generated training set and per-family benchmarks."""

from __future__ import annotations

from dpvr.cli.help import hidden_alias


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("data", help="generated training data and benchmarks",
                              description="Generated training data and benchmarks (offline).")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    g = sub.add_parser(
        "generate", help="write train.json, images, <family>.jsonl and manifest.json",
        description=("Generates the synthetic scenes, the LLaVA-format training conversations (train.json), one "
                     "benchmark file per question family (<family>.jsonl: pope, mc, count, colour, spatial, "
                     "digit) with their images, and manifest.json with the settings and a hash of every file. "
                     "Offline and deterministic: the same seed gives byte-identical files. This is how the "
                     "embedded benchmark is made."))
    g.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    g.add_argument("--seed", type=int, default=0, help="random seed; same seed -> byte-identical files")
    g.add_argument("--num-train", type=int, default=20000, help="training conversation records")
    g.add_argument("--num-test-per-family", type=int, default=300, help="benchmark items per family")
    g.add_argument("--test-wording", default="llava", metavar="{llava,dpvr}",
                   help="benchmark questions' format instructions: llava (the stock lmms-eval tasks' suffixes, "
                        "default) or dpvr (yes/no questions end in 'Answer with yes or no.')")
    g.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    hidden_alias(g, "--no-progress", "quiet", action="store_true")
    g.set_defaults(func=_generate)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _generate(args) -> int:
    from dpvr.cli import UserError
    from dpvr.data import generate_dataset

    try:
        m = generate_dataset(args.out, seed=args.seed, num_train=args.num_train,
                             num_test_per_family=args.num_test_per_family, overwrite=args.overwrite,
                             progress=not args.quiet, test_wording=args.test_wording)
    except (FileExistsError, ValueError) as err:
        raise UserError(str(err)) from None
    c = m["counts"]
    print(f"wrote {args.out}: {c['train_total']} training records ({len(m['files'])} files), "
          f"benchmarks " + ", ".join(f"{k}={v}" for k, v in c["test"].items()))
    return 0
