"""``dpvr eval``: evaluate one or more methods on benchmark files; one call gives the comparison table.

    dpvr eval --method vanilla --method lf=adapter:runs/lf/adapter --blind --out runs/eval
    dpvr eval --model DIR --benchmark DATA --families pope mc --method vanilla --method fastv:k=2,ratio=0.25 \\
              --method vtw:k=4 --batch-size 32 --limit 100 --circular --out runs/eval

Writes ``results.json``, ``results.md`` and ``predictions/<method>.jsonl`` to ``--out`` once every
method has run, and prints the table. A thin layer over :func:`dpvr.evaluation.run_eval`. Progress:
one bar per method (questions/total); --quiet hides it.

method specs (--method, repeatable; [] = optional):
  [LABEL=]vanilla                       the base model unchanged (alias: base)
  [LABEL=]adapter:PATH                  a trained DPVR adapter (dpvr train: OUT/adapter)
  [LABEL=]adapter:PATH,fastv_k=K[,fastv_ratio=R]
                                        the adapter composed with FastV pruning in the shallow stack
  [LABEL=]lora:PATH                     a peft LoRA adapter (dpvr train --method lora: OUT/adapter)
  [LABEL=]full:PATH                     a fully fine-tuned checkpoint (dpvr train --method full: OUT/model)
  [LABEL=]fastv[:k=K][,ratio=R]         FastV: keep the share R of image tokens after layer K (default 2, 0.5)
  [LABEL=]vtw:k=K                       VTW: withdraw every image token from layer K on
LABEL names the row (default: derived from the spec, e.g. fastv(k=2,ratio=0.25), adapter(<run folder>)).

metrics (percent): POPE-style yes/no families: accuracy, precision, recall, F1, yes-ratio per category
and overall; multiple choice: accuracy on the parsed option letter ("B", "B.", "(B) ...", the option
text), circular with --circular; other families: exact match after normalisation (case, punctuation,
articles, number words). mean = mean of the family accuracies.
"""

from __future__ import annotations

import argparse
import sys

from dpvr.cli.help import ListAction, hidden_alias


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluate methods (vanilla, DPVR adapters, LoRA/full, FastV, VTW) on benchmark files",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", action="append", required=True, metavar="SPEC",
                   help="a method spec (see above); repeat to compare several in one table")
    p.add_argument("--model", default=None, help="base LLaVA model folder or hub id (default: the embedded tiny LLaVA)")
    p.add_argument("--benchmark", default=None,
                   help="folder with <family>.jsonl files and their images (default: the embedded benchmark)")
    p.add_argument("--families", action=ListAction, default=None, metavar="FAMILY",
                   help="families to evaluate, space- or comma-separated (default: every <family>.jsonl in "
                        "--benchmark)")
    p.add_argument("--out", required=True, help="output folder (results.json, results.md, predictions/)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per generate call")
    p.add_argument("--limit", type=int, default=None,
                   help="questions per benchmark family: the first N records of each (default: all)")
    hidden_alias(p, "--eval-limit", "limit", type=int)
    p.add_argument("--max-new-tokens", type=int, default=16, help="greedy decoding budget per answer")
    p.add_argument("--blind", nargs="?", const="also", default="off", choices=["off", "also", "only"],
                   help="replace every image with a blank one: --blind adds a '<label> [blind]' row per method, "
                   "--blind only evaluates blank images only")
    p.add_argument("--circular", action="store_true",
                   help="multiple choice as MMBench's CircularEval: each question once per rotation of its options, "
                   "correct only if every rotation is")
    p.add_argument("--seed", type=int, default=0, help="torch seed set before each method (decoding is greedy)")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--attn-implementation", default="sdpa", choices=["sdpa", "eager"])
    p.add_argument("--allow-outside-paths", action="store_true",
                   help="let image paths resolve outside --benchmark (../, absolute paths, symlinks out)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    hidden_alias(p, "--no-progress", "quiet", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dpvr.cli import UserError
    from dpvr.evaluation import EvalSettings, parse_methods, run_eval
    from dpvr.evaluation.runner import table

    for name in ("batch_size", "limit", "max_new_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    specs = parse_methods(args.method)
    settings = EvalSettings(
        benchmark=args.benchmark, families=args.families, limit=args.limit, batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens, blind=args.blind, circular=args.circular, seed=args.seed,
        dtype=args.dtype, device=args.device, attn_implementation=args.attn_implementation, progress=not args.quiet,
        allow_outside_paths=args.allow_outside_paths,
    )
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    results = run_eval(specs, out=args.out, model=args.model, settings=settings)
    print(table(results), end="")
    print(f"wrote {args.out}/results.json, results.md and predictions/", file=sys.stderr)
    return 0
