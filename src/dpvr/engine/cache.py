"""The per-layer KV cache of a routed model, and the routing state that decode needs beside it.

Shallow, ``fuse`` and ``kv`` layers cache every position of the prompt; ``text`` layers cache only
the text view (no image positions). After FastV pruning (layer k on), layers cache only the kept
view (text and kept image positions), and ``text`` layers the text positions of it.
`DPVRCache` is a stock `DynamicCache` (each layer already holds its own length) that also
carries `RoutingState`: which text-view (and kept-view) slots are real keys and how long the
prompt was. Beam search reorders both together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from transformers import DynamicCache


@dataclass
class RoutingState:
    text_key_valid: torch.Tensor | None  # (B, Lt) bool: text-view slots of the prompt that are real, unpadded keys
    prompt_len: int  # L, full-view length of the prompt
    kept_key_valid: torch.Tensor | None = None  # (B, Lk) bool: kept-view slots that are real, unpadded keys (FastV)
    kept_positions: torch.Tensor | None = None  # (B, Lk) full-view position of each kept-view slot (FastV)

    def _map(self, fn) -> "RoutingState":
        def f(t):
            return None if t is None else fn(t)

        return RoutingState(f(self.text_key_valid), self.prompt_len, f(self.kept_key_valid), f(self.kept_positions))

    def select(self, idx: torch.Tensor) -> "RoutingState":
        return self._map(lambda t: t.index_select(0, idx.to(t.device)))

    def repeat_interleave(self, repeats: int) -> "RoutingState":
        return self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def kept_image_positions(self, image_mask: torch.Tensor) -> list[list[int]]:
        """Per sample, the full-view image positions FastV kept (sorted); ``image_mask`` (B, L) marks the image tokens."""
        if self.kept_positions is None:
            raise ValueError("this prompt was not pruned (no FastV in its config)")
        kept = []
        for b in range(self.kept_positions.shape[0]):
            pos = self.kept_positions[b][self.kept_key_valid[b]]
            kept.append(sorted(int(p) for p in pos if bool(image_mask[b, p])))
        return kept


class RoutedCache:
    """Mixin of every cache a routed model decodes with: the routing state of its prompt, kept in step
    with the cache's batch when beam search or batch selection reorders it."""

    routing: RoutingState | None = None

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        if self.routing is not None:
            self.routing = self.routing.select(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        if self.routing is not None:
            self.routing = self.routing.repeat_interleave(repeats)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        if self.routing is not None:
            self.routing = self.routing.select(indices)


class DPVRCache(RoutedCache, DynamicCache):
    """A `DynamicCache` whose layers may hold different lengths, plus the routing state of its prompt.

    For fixed-shape (compiled) decode see `dpvr.engine.static_cache.DPVRStaticCache`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.routing: RoutingState | None = None


class ImageKVInjector:
    """Stands in for the cache during one ``kv``-mode layer call at prefill.

    The decoder layer computes keys/values for the text positions it was given and calls
    ``cache.update(k, v, layer_idx)``; this object merges in the image keys/values (projected
    from the side-branch output by `merge`) so that attention runs over text ∪ image, then
    stores the merged result in the real cache, if any.
    """

    def __init__(self, merge: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]], inner=None):
        self.merge = merge
        self.inner = inner

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        key_states, value_states = self.merge(key_states, value_states)
        if self.inner is not None:
            return self.inner.update(key_states, value_states, layer_idx, *args, **kwargs)
        return key_states, value_states
