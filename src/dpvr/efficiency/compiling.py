"""What the benches need around ``torch.compile``: room in dynamo's per-function cache, and recompile counts.

Every wrapped model of one base runs the same Python functions (the engine's, ``transformers``' layers),
and dynamo keeps one cache of compiled entries per function, ``recompile_limit`` (8) deep; past it, a
function silently runs eagerly. A bench that compiles several methods at several batch sizes and
lengths needs more entries than that, so it raises the limit while it runs (`compile_room`). And a
compiled entry that compiles again inside a timed round would time the compiler: `frames_compiled`
lets a bench count those rounds and report them, instead of a ratio that misleads.
"""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def compile_room(entries: int):
    """Raise dynamo's per-function ``recompile_limit`` to at least ``entries`` inside the block."""
    import torch._dynamo

    limit = max(int(torch._dynamo.config.recompile_limit), int(entries))
    with torch._dynamo.config.patch(recompile_limit=limit):
        yield limit


def frames_compiled() -> int:
    """How many frames dynamo has compiled in this process so far (grows on every (re)compilation)."""
    from torch._dynamo.utils import counters

    return int(counters["frames"]["total"])


def default_mode(device, backend: str, mode: str | None) -> str | None:
    """The compile mode a bench uses: ``mode`` if given, else ``reduce-overhead`` (CUDA graphs) for inductor on
    CUDA and torch's default elsewhere."""
    if mode is not None:
        return mode
    return "reduce-overhead" if device.type == "cuda" and backend == "inductor" else None


def room_for(entries: int, layouts: int) -> int:
    """Dynamo cache entries per function a bench may need: one per timed entry and layout, with slack for the
    resume functions after graph breaks and guard variants."""
    return 4 * entries * layouts
