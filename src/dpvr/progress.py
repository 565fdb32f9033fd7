"""One progress display for every long stage: a tqdm bar with the same look everywhere.

    from dpvr.progress import bar
    with bar(total=len(records), desc="eval vanilla", unit="q", enabled=progress) as b:
        ...; b.update(n)

Bars write to stderr, so tables and results on stdout stay clean; ``enabled=False`` (``--quiet``)
hides them. The position/ETA format is tqdm's: ``desc: 40%|####  | 120/300 [00:31<00:47, 3.8q/s]``.
"""

from __future__ import annotations

import contextlib
import sys


def bar(total: int | None = None, desc: str = "", unit: str = "it", enabled: bool = True, initial: int = 0, **kw):
    """A tqdm bar (a disabled one when ``enabled`` is False)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, initial=initial, file=sys.stderr,
                dynamic_ncols=True, **kw)


@contextlib.contextmanager
def hf_bars(enabled: bool):
    """Show transformers' own bars (weight loading) only when ``enabled``; restores the previous setting."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if before else hf_logging.disable_progress_bar)()
