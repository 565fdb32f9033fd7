"""The attention pattern of ``kv`` layers at prefill: text queries over the full view's keys.

A text query at original position p sees every key at a position <= p (text and image alike). Per
sample the visible keys grow by one per text query except at the image, where they jump by its
length; no single causal (mask-free) call expresses that, so the general form is an explicit mask
(`dense_kv_mask`, one per prefill, shared by every kv layer).

When every sample's image is the same run of positions (one image, same layout, no padding: the
engine's `RoutingIndex.image_block`) the pattern splits into two mask-free ones (`KVSplitBias`):

- the a text queries before the image see the first a keys, causally (square: ``is_causal``);
- the text queries after it see every key up to their own: a causal pattern aligned to the
  lower-right corner (torch's ``causal_lower_right``), which sdpa runs on its flash / memory-
  efficient kernels on a GPU.

`KVSplitBias` is a tensor subclass, like torch's own ``CausalBias``: it travels through the
decoder layer as its ``attention_mask`` and turns the one ``scaled_dot_product_attention`` call of
``transformers``' sdpa attention into those two, so no model code is touched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from dpvr.engine.index import RoutingIndex


class KVSplitBias(torch.Tensor):
    """sdpa ``attn_mask`` for text queries (a before the image, the rest after it) over full-view keys
    (a text, ``image_len`` image, the rest text), computed as two mask-free calls.

    As a tensor it is the pattern itself, a (1, 1, Lt, L) boolean mask (True: the query sees the key),
    so anything that uses it as a plain mask gets the right answer; ``scaled_dot_product_attention``
    alone is intercepted and split.
    """

    prefix_len: int
    image_len: int

    @staticmethod
    def __new__(cls, prefix_len: int, image_len: int, text_len: int, device=None):
        queries = torch.arange(text_len, device=device)
        original = torch.where(queries < prefix_len, queries, queries + image_len)  # (Lt,) full-view positions
        allowed = torch.arange(text_len + image_len, device=device)[None, :] <= original[:, None]  # (Lt, L)
        self = torch.Tensor._make_subclass(cls, allowed[None, None])  # (1, 1, Lt, L)
        self.prefix_len, self.image_len = prefix_len, image_len
        return self

    def __init__(self, *args, **kwargs):
        super().__init__()

    def materialize(self) -> torch.Tensor:
        """The pattern as a plain (1, 1, Lt, L) boolean tensor."""
        return self.as_subclass(torch.Tensor)

    @staticmethod
    def attend(query, key, value, attn_mask: "KVSplitBias", dropout_p: float = 0.0, is_causal: bool = False,
               scale: float | None = None, enable_gqa: bool = False) -> torch.Tensor:
        """query (B, H, Lt, hd), key/value (B, H_kv, L, hd) -> (B, H, Lt, hd)."""
        if is_causal:
            raise ValueError("KVSplitBias is a mask: call scaled_dot_product_attention with is_causal=False")
        a, lt, length = attn_mask.prefix_len, query.shape[-2], key.shape[-2]
        if length != lt + attn_mask.image_len:
            raise ValueError(f"KVSplitBias for {lt} text queries and {attn_mask.image_len} image keys got {length} keys")
        outs = []
        if a:  # text before the image: causal over the first a keys
            outs.append(F.scaled_dot_product_attention(
                query[..., :a, :], key[..., :a, :], value[..., :a, :], dropout_p=dropout_p, is_causal=True,
                scale=scale, enable_gqa=enable_gqa))  # (B, H, a, hd)
        if lt > a:  # text after the image: every key up to its own, lower-right aligned
            outs.append(F.scaled_dot_product_attention(
                query[..., a:, :], key, value, attn_mask=_lower_right(lt - a, length, query.device), dropout_p=dropout_p,
                scale=scale, enable_gqa=enable_gqa))  # (B, H, Lt - a, hd)
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-2)  # (B, H, Lt, hd)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return cls.attend(*args, **kwargs)
        with torch._C.DisableTorchFunctionSubclass():  # a plain boolean mask for everything else
            return func(*args, **kwargs)

    def __repr__(self) -> str:  # noqa: D105
        return (f"KVSplitBias(prefix_len={self.prefix_len}, image_len={self.image_len}, "
                f"text_len={self.shape[-2]}, keys={self.shape[-1]})")


def _lower_right(q_len: int, k_len: int, device: torch.device):
    """Lower-right causal pattern (q_len, k_len): torch's ``CausalBias`` on an accelerator (sdpa's flash /
    memory-efficient kernels take it without a mask), a boolean mask on CPU (where torch would build
    that mask itself) and inside a ``TorchDispatchMode`` (FLOP counters, memory trackers), where torch
    cannot create its bias subclass."""
    if device.type != "cpu":
        try:
            return causal_lower_right(q_len, k_len)
        except RuntimeError:
            pass
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)


def dense_kv_mask(index: RoutingIndex, attention_mask, length: int, dtype) -> torch.Tensor:
    """(B, 1, Lt, L) additive mask (0 / dtype min): key position <= the text query's original position.

    Additive, built once per prefill and shared by every kv layer: sdpa would otherwise convert a
    boolean mask on every call.
    """
    keys = torch.arange(length, device=index.text_idx.device)
    allowed = keys[None, None, :] <= index.text_idx[:, :, None]  # (B, Lt, L)
    if attention_mask is not None:
        allowed = allowed & attention_mask.bool()[:, None, :]
    allowed = allowed[:, None]  # (B, 1, Lt, L)
    return torch.where(allowed, torch.zeros((), dtype=dtype, device=allowed.device), torch.finfo(dtype).min)


def kv_attention_mask(index: RoutingIndex, attention_mask, length: int, dtype, impl: str):
    """The mask every kv layer of one prefill receives: `KVSplitBias` where sdpa runs and the image is
    one shared run with no padding, else `dense_kv_mask`."""
    if impl == "sdpa" and index.image_block is not None and index.image_block[1] > 0 and (
            attention_mask is None or bool(attention_mask.all())):
        start, n = index.image_block
        return KVSplitBias(start, n, index.text_idx.shape[1], device=index.text_idx.device)
    return dense_kv_mask(index, attention_mask, length, dtype)
