"""DPVR's deep-layer modes on vLLM's Llama layers (flattened batch of ``n`` tokens, vLLM's paged KV cache).

vLLM hands the model one flat batch: prefill chunks and decode tokens of many requests, with
``positions`` (n,) and per-layer attention metadata (``query_start_loc``, ``seq_lens``, ``block_table``,
``slot_mapping``). The modes (SPEC §3) become:

- ``fuse`` (and ``kv``, whose text outputs are the same; see :func:`fuse_layer`): image rows are set
  to the side branch's output, then the stock layer runs on every row with vLLM's own attention.
- ``text`` (:func:`text_layer`): only the text rows are computed (projections, attention, MLP); their
  K/V go to this layer's own paged cache, and each text query attends to the text keys of its
  request, found through a per-slot "is image" flag (:class:`SlotFlags`). Image rows pass through
  untouched and their slots in this layer's cache are never read.

The text layers' attention is plain torch (``scaled_dot_product_attention`` per request), so it works
with any attention backend's cache tensor: the layer's cache is only reinterpreted as
``(slots, 2, kv_heads, head_dim)`` storage that no vLLM kernel reads (this layer never calls its
``Attention`` module; the module exists so that vLLM allocates the blocks and builds the metadata).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fuse_layer(layer, x: torch.Tensor, positions: torch.Tensor, is_image: torch.Tensor,
               side: torch.Tensor) -> torch.Tensor:
    """A full layer with the image rows set to the side output; returns the residual stream (n, d)."""
    x = torch.where(is_image[:, None], side, x)
    hidden, residual = layer(positions, x, None)
    return hidden + residual


def _context(layer):
    from vllm.model_executor.layers.attention.attention import get_attention_context

    return get_attention_context(layer.self_attn.attn.layer_name)


def _storage(kv_cache: torch.Tensor, num_kv_heads: int, head_dim: int) -> torch.Tensor:
    """The layer's cache as (slots, 2, kv_heads, head_dim): this module's own layout."""
    return kv_cache.view(-1).view(-1, 2, num_kv_heads, head_dim)


def _block_size(kv_cache: torch.Tensor) -> int:
    # CPU: (blocks, kv_heads, block, 2*hd); flash/triton: (2|blocks, blocks|2, block, kv_heads, hd)
    return kv_cache.shape[2]


class SlotFlags:
    """Whether each KV-cache slot holds an image position; written once per forward for every token."""

    def __init__(self):
        self.flags: torch.Tensor | None = None

    def record(self, layer, is_image: torch.Tensor) -> None:
        meta, _, kv_cache, slot_mapping = _context(layer)
        if meta is None or slot_mapping is None or kv_cache.numel() == 0:
            return
        attn = layer.self_attn
        slots = _storage(kv_cache, attn.num_kv_heads, attn.head_dim).shape[0]
        if self.flags is None or self.flags.shape[0] != slots or self.flags.device != kv_cache.device:
            self.flags = torch.zeros(slots, dtype=torch.bool, device=kv_cache.device)
        n = min(slot_mapping.shape[0], is_image.shape[0])
        sm = slot_mapping[:n]
        ok = sm >= 0
        self.flags[sm[ok]] = is_image[:n][ok]


def text_layer(layer, x: torch.Tensor, positions: torch.Tensor, is_image: torch.Tensor,
               flags: SlotFlags) -> torch.Tensor:
    """Run ``layer`` on the text rows of ``x`` (n, d) only, attending to text keys only; returns (n, d)."""
    rows = (~is_image).nonzero().squeeze(1)  # (nt,) text rows, ascending
    if rows.numel() == 0:
        return x
    attn = layer.self_attn
    xt = x[rows]  # (nt, d)
    h = layer.input_layernorm(xt)
    qkv, _ = attn.qkv_proj(h)
    q, k, v = qkv.split([attn.q_size, attn.kv_size, attn.kv_size], dim=-1)
    q, k = attn.rotary_emb(positions[rows], q, k)
    out = _paged_text_attention(layer, rows, positions, q, k, v, flags)  # (nt, H * hd)
    o, _ = attn.o_proj(out)
    h, residual = layer.post_attention_layernorm(o, xt)
    h = layer.mlp(h)
    x = x.clone()
    x[rows] = h + residual
    return x


def _paged_text_attention(layer, rows, positions, q, k, v, flags: SlotFlags) -> torch.Tensor:
    attn = layer.self_attn
    H, Hkv, hd = attn.num_heads, attn.num_kv_heads, attn.head_dim
    out = torch.zeros(rows.shape[0], H * hd, dtype=q.dtype, device=q.device)
    meta, _, kv_cache, slot_mapping = _context(layer)
    if meta is None or kv_cache.numel() == 0 or flags.flags is None:  # profiling / warm-up run
        return out
    store = _storage(kv_cache, Hkv, hd)
    bs = _block_size(kv_cache)
    slots = slot_mapping[rows]
    ok = slots >= 0
    store[slots[ok], 0] = k.view(-1, Hkv, hd)[ok].to(store.dtype)
    store[slots[ok], 1] = v.view(-1, Hkv, hd)[ok].to(store.dtype)
    qsl = meta.query_start_loc.tolist()
    seq_lens = meta.seq_lens.tolist()
    bounds = torch.searchsorted(rows, torch.tensor(qsl, device=rows.device)).tolist()
    q = q.view(-1, H, hd)
    for r, length in enumerate(seq_lens):
        a, b = bounds[r], bounds[r + 1]  # this request's text rows among ``rows``
        if a == b:
            continue
        pos = torch.arange(length, device=q.device)
        req_slots = meta.block_table[r, pos // bs].long() * bs + pos % bs  # (L,)
        keep = ~flags.flags[req_slots]
        key_slots, key_pos = req_slots[keep], pos[keep]  # text keys of this request
        keys = store[key_slots, 0].to(q.dtype).transpose(0, 1)  # (Hkv, Lk, hd)
        values = store[key_slots, 1].to(q.dtype).transpose(0, 1)
        if Hkv != H:
            keys = keys.repeat_interleave(H // Hkv, dim=0)
            values = values.repeat_interleave(H // Hkv, dim=0)
        mask = key_pos[None, :] <= positions[rows[a:b]][:, None]  # (nq, Lk) causal in original positions
        o = F.scaled_dot_product_attention(q[a:b].transpose(0, 1), keys, values, attn_mask=mask, scale=attn.scaling)
        out[a:b] = o.transpose(0, 1).reshape(b - a, H * hd)
    return out
