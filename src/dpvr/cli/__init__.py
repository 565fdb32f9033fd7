"""The ``dpvr`` command line: one entry point, each subcommand a thin mapping onto library functions.

Each subcommand lives in ``dpvr/cli/<name>.py`` and exposes ``add_parser(subparsers)``, which
registers its parser and sets ``func`` to a callable taking the parsed ``argparse.Namespace``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Order is the order shown in ``dpvr --help``.
SUBCOMMANDS: list[str] = ["demo", "data", "tiny", "route", "train", "eval", "analyze", "bench", "sweep"]


class UserError(Exception):
    """Bad input from the user: printed as one clear line, exit status 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    from dpvr import __version__

    parser = argparse.ArgumentParser(
        prog="dpvr",
        description="Modality-asymmetric token routing (DPVR) for LLaVA-style multimodal LLMs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dpvr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"dpvr.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from dpvr.backbones import UnsupportedModelError

    try:
        result = args.func(args)
    except (UserError, FileNotFoundError, ValueError, UnsupportedModelError) as err:
        # Library code raises ValueError/FileNotFoundError with user-facing messages.
        if os.environ.get("DPVR_DEBUG"):
            raise
        print(f"dpvr {args.command}: error: {err}", file=sys.stderr)
        print("(set DPVR_DEBUG=1 for the full traceback)", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
