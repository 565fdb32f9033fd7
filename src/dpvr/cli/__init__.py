"""The ``dpvr`` command line: one entry point, each subcommand a thin mapping onto library functions.

Each subcommand lives in ``dpvr/cli/<name>.py`` and exposes ``add_parser(subparsers)``, which
registers its parser and sets ``func`` to a callable taking the parsed ``argparse.Namespace``.
Parsers import nothing heavy: torch and transformers are imported inside ``func``, so ``--help``
answers at once (``tests/test_cli_help.py``). Help texts are formatted by `dpvr.cli.help`.

Ctrl-C anywhere prints one line and exits with status 130; every long stage writes its outputs
atomically, so rerunning the same command continues from what was finished.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from dpvr.cli import help as help_format

# Order is the order shown in ``dpvr --help``.
SUBCOMMANDS: list[str] = ["demo", "data", "tiny", "route", "train", "eval", "analyze", "bench", "sweep", "adapter", "serve"]


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
    help_format.apply(parser)
    return parser


def _bad_input_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input or an unusable path, not a bug: one line, exit 2.

    ``ValueError`` covers :class:`dpvr.validation.BadInput` (every schema, JSON and image check) and the
    library's own argument checks; ``OSError`` covers missing, unreadable and unwritable paths; Pillow's
    decompression-bomb error is caught where images are opened, and here as a last resort.
    """
    from PIL import Image

    from dpvr.backbones import UnsupportedModelError  # a model of a family dpvr has no adapter for

    return (UserError, ValueError, OSError, Image.DecompressionBombError, UnsupportedModelError)


def _new_folders(path: str | None) -> list[Path]:
    """The folders of ``path`` (itself and missing parents) that do not exist yet, deepest first."""
    if not path:
        return []
    missing, p = [], Path(path).absolute()
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove the folders a failed command created, if it left them empty (never anything with content)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Subcommands that wrap another tool (``serve``: vLLM's server) pass options they do not know through.
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    created = _new_folders(getattr(args, "out", None))
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print(f"\ndpvr {args.command}: interrupted; rerun the same command to continue", file=sys.stderr)
        return 130
    except _bad_input_errors() as err:
        # Library code raises ValueError/FileNotFoundError/BadInput with user-facing messages.
        _remove_if_empty(created)
        if os.environ.get("DPVR_DEBUG"):
            raise
        print(f"dpvr {args.command}: error: {_one_line(err)}", file=sys.stderr)
        print("(set DPVR_DEBUG=1 for the full traceback)", file=sys.stderr)
        return 2
    except BaseException:
        _remove_if_empty(created)
        raise
    return int(result or 0)


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:  # raised by the OS, not with one of dpvr's messages
        text = f"{err.filename}: {err.strerror}" if err.filename else err.strerror
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
