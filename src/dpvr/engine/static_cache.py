"""Fixed-shape decode: `DPVRStaticCache` (per-layer preallocated K/V) and the decode step that runs on it.

    cache = DPVRStaticCache(model.text_config, max_new_tokens=32)
    out = model(**prompt, cache=cache)                       # prefill (eager, exact as with DPVRCache)
    model.compile_decode(mode="reduce-overhead")             # optional: torch.compile the decode step
    ids = model.generate(**prompt, max_new_tokens=32, dpvr_static_cache=True)   # or cache_implementation="static"

Each layer's buffer is allocated at its first update (the prefill) to what that layer keeps of the
prompt plus ``max_new_tokens``: shallow, ``fuse`` and ``kv`` layers the whole prompt, ``text`` layers
the text view only (never an image position), layers after FastV's pruning the kept view. From then
on every decode step has the same shapes: each layer attends over its whole buffer with a boolean
mask ``slot is a real prompt key or a generated one, and slot <= this step's slot``, built inside the
step from the layer group's ``cumulative_length`` (a tensor, so nothing recompiles as it grows).

Generated tokens always count as real keys (``generate`` never pads them); the prompt's padding is
read once, at prefill. Prefill itself attends over exactly the keys it was given (as a
`DPVRCache` does), so its outputs equal the dynamic cache's bit for bit.

`decode_step` is a plain function of (backbone, cache, embeddings, positions) with no data-dependent
Python, so ``torch.compile`` traces it once per batch size (``dynamic=False``); with
``mode="reduce-overhead"`` on a GPU the whole step replays as one CUDA graph.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, StaticLayer

from dpvr.engine.cache import RoutedCache


class DPVRStaticLayer(StaticLayer):
    """A `StaticLayer` sized at its first update: what this layer keeps of the prompt + ``max_new_tokens``."""

    def __init__(self, max_new_tokens: int):
        super().__init__(max_cache_len=0)
        self.max_new_tokens = max_new_tokens

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.max_cache_len = key_states.shape[-2] + self.max_new_tokens
        super().lazy_initialization(key_states, value_states)

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:  # prefill: store, then attend over exactly the prompt's keys
            super().update(key_states, value_states)
            return key_states, value_states
        return super().update(key_states, value_states)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        if not self.is_initialized:  # prefill masks are sized to the prompt (sdpa may then skip them)
            return query_length, 0
        return self.max_cache_len, 0


class DPVRStaticCache(RoutedCache, Cache):
    """Per-layer preallocated K/V for a routed (or vanilla) `DPVRModel`; see the module docstring.

    ``is_compileable`` is False towards ``transformers``: ``generate`` must neither build one 4-D mask
    for all layers (they hold different lengths) nor compile the whole forward; dpvr compiles its own
    decode step (`DPVRModel.compile_decode`).
    """

    def __init__(self, config, max_new_tokens: int):
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive int (the static cache's room for new tokens), "
                             f"got {max_new_tokens!r}")
        text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        super().__init__(layers=[DPVRStaticLayer(max_new_tokens) for _ in range(text.num_hidden_layers)])
        self.max_new_tokens = max_new_tokens
        self.routing = None
        self.prompt_attention_mask: torch.Tensor | None = None  # (B, L) padding of the prompt, set at prefill
        self.decoded = 0  # tokens decoded so far (checked against max_new_tokens, outside any compiled code)
        self.groups: tuple[str, ...] = ()  # per layer: "full", "text" or "kept"
        self.group_first: dict[str, int] = {}  # group -> its first layer (whose cumulative_length it follows)
        self.key_valid: dict[str, torch.Tensor] = {}  # group -> (B, max_len) bool: real prompt keys + new slots

    @property
    def is_compileable(self) -> bool:
        return False

    @property
    def prefilled(self) -> bool:
        return bool(self.layers) and self.layers[0].is_initialized

    def prepare_decode(self, plan) -> None:
        """Once, after prefill: which layers share a key layout, and each group's key validity (B, max_len)."""
        if self.groups:
            return
        kept = set() if plan.prune_layer is None else set(range(plan.prune_layer, plan.num_layers))
        self.groups = tuple("text" if plan.modes[i] == "text" else "kept" if i in kept else "full"
                            for i in range(plan.num_layers))
        for i, g in enumerate(self.groups):
            self.group_first.setdefault(g, i)
        state = self.routing
        for g, i in self.group_first.items():
            layer = self.layers[i]
            prompt = layer.max_cache_len - self.max_new_tokens
            device = layer.keys.device
            if g == "full":
                valid = self.prompt_attention_mask
            elif state is None:
                raise ValueError("decoding a routed model needs the cache its prefill call filled "
                                 "(pass cache=outputs.cache, or use model.generate)")
            else:
                valid = state.text_key_valid if g == "text" else state.kept_key_valid
            batch = layer.keys.shape[0]
            if valid is None:
                valid = torch.ones(batch, prompt, dtype=torch.bool, device=device)
            valid = valid.to(device=device, dtype=torch.bool)[:, :prompt]
            if valid.shape != (batch, prompt):
                raise ValueError(f"the prompt's key mask has shape {tuple(valid.shape)}, but layer {i} cached "
                                 f"{prompt} prompt keys for {batch} samples")
            tail = torch.ones(batch, self.max_new_tokens, dtype=torch.bool, device=device)
            self.key_valid[g] = torch.cat([valid, tail], dim=1).contiguous()
            torch._dynamo.mark_static_address(self.key_valid[g])

    def decode_mask(self, group: str, q_len: int, dtype: torch.dtype, additive: bool) -> torch.Tensor:
        """(B, 1, q, max_len) mask of one layer group for the next ``q_len`` tokens (bool, or additive float)."""
        valid = self.key_valid[group]  # (B, S)
        start = self.layers[self.group_first[group]].cumulative_length  # () tensor: slot of the first new token
        slots = torch.arange(valid.shape[1], device=valid.device)
        last = start + torch.arange(q_len, device=valid.device)  # (q,)
        allowed = valid[:, None, None, :] & (slots[None, None, None, :] <= last[None, None, :, None])
        if not additive:
            return allowed
        return torch.where(allowed, torch.zeros((), dtype=dtype, device=valid.device), torch.finfo(dtype).min)

    def rewind(self) -> None:
        """Back to the state right after prefill: the decoded slots are overwritten by the next steps."""
        if self.decoded:
            for layer in self.layers:
                layer.cumulative_length.sub_(self.decoded)  # in place: compiled steps hold its address
            self.decoded = 0

    def check_room(self, q_len: int) -> None:
        if self.decoded + q_len > self.max_new_tokens:
            raise ValueError(f"the static cache has room for {self.max_new_tokens} new tokens and "
                             f"{self.decoded} are used; build it with a larger max_new_tokens")


def decode_step(backbone, cache: DPVRStaticCache, inputs_embeds: torch.Tensor, position_ids: torch.Tensor | None,
                additive: bool) -> torch.Tensor:
    """One decode step over every layer on ``cache``; returns the logits (B, q, vocab).

    No data-dependent Python and fixed shapes: this is what `DPVRModel.compile_decode` compiles.
    """
    q_len = inputs_embeds.shape[1]
    positions = backbone.positions(inputs_embeds, position_ids, cache)
    position_embeddings = backbone.rotary(inputs_embeds, positions)
    masks = {g: cache.decode_mask(g, q_len, inputs_embeds.dtype, additive) for g in cache.group_first}
    hidden = inputs_embeds  # (B, q, d)
    for i, layer in enumerate(backbone.layers):
        hidden = backbone.call_layer(layer, hidden, masks[cache.groups[i]], positions.layer, cache, True,
                                     position_embeddings)
    return backbone.lm_head(backbone.norm(hidden))  # (B, q, vocab)
