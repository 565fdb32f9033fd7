"""How ``dpvr ... --help`` reads: plain text, each option's default stated once, in words.

`Formatter` is the one help formatter of every ``dpvr`` parser (set by ``dpvr.cli.build_parser``):

- a one-paragraph description is wrapped to the terminal; one with line breaks (a module's
  docstring) keeps them; both lose reStructuredText markup (````dpvr eval````, ``:func:`x``` ->
  ``dpvr eval``, ``x``);
- an option whose help does not already state its default gets ``(default: X)`` with X in plain
  words (lists comma-separated, ``I/N`` pairs with a slash); ``None``, ``False`` and required options
  get nothing, since "not set" is what the help text describes.

`ListAction` makes a list option accept both ``--families a b`` and ``--families a,b``.
"""

from __future__ import annotations

import argparse
import re

_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")  # :func:`dpvr.x` -> dpvr.x
_LITERAL = re.compile(r"``([^`]+)``")  # ``x`` -> x
_INTERPRETED = re.compile(r"`([^`]+)`")  # `x` -> x
_DOUBLE_COLON = re.compile(r"::$", re.M)  # "Example::" -> "Example:"


def plain(text: str) -> str:
    """``text`` without reStructuredText roles and literal markup."""
    return _DOUBLE_COLON.sub(":", _INTERPRETED.sub(r"\1", _LITERAL.sub(r"\1", _ROLE.sub(r"\1", text))))


def plain_value(value) -> str:
    """A default as a user would type it: ``[0, 1]`` -> ``0,1``, ``(0, 1)`` (a shard) -> ``0/1``."""
    if isinstance(value, tuple):
        return "/".join(str(v) for v in value)
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


class Formatter(argparse.RawDescriptionHelpFormatter):
    def _fill_text(self, text, width, indent):
        text = plain(text)
        if "\n" in text.strip():
            return super()._fill_text(text, width, indent)
        return argparse.HelpFormatter._fill_text(self, text, width, indent)

    def _get_help_string(self, action):
        text = plain(action.help or "")
        default = action.default
        if ("default" in text.lower() or action.required or default is None or default is False
                or default is argparse.SUPPRESS or isinstance(action, argparse._VersionAction)
                or action.option_strings == [] or default == []):
            return text
        return f"{text} (default: {plain_value(default).replace('%', '%%')})"


class ListAction(argparse.Action):
    """``nargs="+"`` that also splits each value on commas: ``a b``, ``a,b`` and ``a, b`` all give [a, b]."""

    def __init__(self, option_strings, dest, nargs="+", **kw):
        super().__init__(option_strings, dest, nargs=nargs, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        items = [v.strip() for value in values for v in str(value).split(",") if v.strip()]
        if not items:
            parser.error(f"{option_string} needs at least one value")
        setattr(namespace, self.dest, items)


def hidden_alias(parser: argparse.ArgumentParser, old: str, dest: str, **kw) -> None:
    """Accept the old option name ``old`` for ``dest`` without listing it in --help (kept for one release)."""
    parser.add_argument(old, dest=dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kw)


def apply(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` and every subparser below it the `Formatter`."""
    parser.formatter_class = Formatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                apply(sub)
