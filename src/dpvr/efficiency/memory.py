"""Peak-memory measurement on CPU and GPU.

* GPU: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was
  allocated before the call (the weights) — the caching allocator's exact tensor peak.
* CPU: :class:`LiveTensorTracker`, a ``TorchDispatchMode`` that sees every ATen op, adds the
  bytes of each newly allocated output storage and subtracts them when the last tensor on it is
  freed. The peak is the most tensor memory alive at once that the call allocated. Scratch
  memory inside a single kernel (e.g. the fused CPU attention kernel's blocks) is not seen, and
  the tracker slows the call, so it runs in separate, untimed passes. Process RSS is not used:
  the C allocator keeps freed pages, so RSS neither falls back nor resets between methods.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

CPU_MEMORY_METHOD = (
    "peak bytes of live tensor storages allocated during the call, tracked at the ATen dispatcher "
    "(TorchDispatchMode; kernel-internal scratch not seen; untimed separate pass)"
)
CUDA_MEMORY_METHOD = "torch.cuda.max_memory_allocated during the call minus torch.cuda.memory_allocated before it"


def _storage_key(t: torch.Tensor) -> int | None:
    if t.device.type == "meta" or t.is_sparse:
        return None
    try:
        st = t.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None
    return st.data_ptr() if st.nbytes() else None


class LiveTensorTracker(TorchDispatchMode):
    """Tracks the bytes of tensor storages allocated while active; ``peak`` is their most at once."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage ptr -> [nbytes, live tensor count]
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {_storage_key(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t, aliases_input=_storage_key(t) in inputs)
        return out

    def _track(self, t: torch.Tensor, aliases_input: bool) -> None:
        key = _storage_key(t)
        if key is None:
            return
        entry = self.live.get(key)
        if entry is None:
            if aliases_input:
                return  # a view of / in-place write to memory that existed before (e.g. a weight)
            entry = self.live[key] = [t.untyped_storage().nbytes(), 0]
            self.current += entry[0]
            self.peak = max(self.peak, self.current)
        entry[1] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del self.live[key]
            self.current -= entry[0]


@contextmanager
def track_peak(device: torch.device):
    """``with track_peak(device) as result: ...``; afterwards ``result["peak_bytes"]`` holds the peak
    memory the block allocated beyond what existed before it (see the module docstring)."""
    result: dict = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize(device)
        result["peak_bytes"] = torch.cuda.max_memory_allocated(device) - before
    else:
        tracker = LiveTensorTracker()
        with tracker:
            yield result
        result["peak_bytes"] = tracker.peak


def memory_method(device: torch.device) -> str:
    return CUDA_MEMORY_METHOD if device.type == "cuda" else CPU_MEMORY_METHOD
