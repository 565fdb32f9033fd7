"""Exact text→image attention mass, under any attention implementation (``sdpa`` included).

``sdpa`` and flash kernels never materialise the attention probabilities, so
``output_attentions`` is unavailable there. :func:`text_to_image_attention` recomputes
``softmax(Q Kᵀ · scale + mask)`` for the text queries only, from the inputs the layer's
``self_attn`` receives (called from a forward pre-hook): the layer's own q/k projections
(and q/k norms where the architecture has them), its rotary ``position_embeddings`` and the
attention mask the layer was given. The arithmetic follows ``eager_attention_forward``
(matmul in the model dtype, softmax in float32, cast back), so under eager attention the
result equals what ``output_attentions`` returns.
"""

from __future__ import annotations

import math
import sys

import torch


def _apply_rope(module):
    fn = getattr(sys.modules.get(type(module).__module__), "apply_rotary_pos_emb", None)
    if fn is None:
        raise ValueError(
            f"cannot recompute attention for {type(module).__name__}: its module has no apply_rotary_pos_emb")
    return fn


def _split_heads(module, proj, norm_name: str, x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(1, T, d) -> (1, heads, T, head_dim), applying the per-head q/k norm if the model has one."""
    y = proj(x).view(*x.shape[:-1], -1, head_dim)
    norm = getattr(module, norm_name, None)
    if norm is not None:
        y = norm(y)
    return y.transpose(1, 2)


@torch.no_grad()
def text_to_image_attention(
    module,
    hidden: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None,
    attention_mask: torch.Tensor | None,
    queries: list[torch.Tensor],
    image: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Share of attention that text queries put on image keys, in one attention module.

    Args:
        module: the layer's ``self_attn`` (Llama-style: ``q_proj``, ``k_proj``, ``head_dim``).
        hidden: (B, L, d) the normalised hidden states the module receives.
        position_embeddings: ``(cos, sin)``, each (B or 1, L, head_dim).
        attention_mask: what the module receives: ``None`` (plain causal), a boolean mask
            (True = attend) or an additive float mask, (B or 1, 1 or H, L, ≥L).
        queries: per sample, the query positions to average over.
        image: (B, L) bool, image-key positions.

    Returns:
        ``(mass, per_head)``: (B,) head- and query-mean share, (B, H) query-mean share per head;
        NaN for samples without queries.
    """
    if position_embeddings is None:
        raise ValueError("attention recompute needs the rotary position_embeddings passed to the layer")
    if attention_mask is not None and not isinstance(attention_mask, torch.Tensor):
        raise ValueError(f"unsupported attention mask type {type(attention_mask).__name__} "
                         "(use attn_implementation='sdpa' or 'eager')")
    rope = _apply_rope(module)
    B, L, _ = hidden.shape
    head_dim = module.head_dim
    groups = getattr(module, "num_key_value_groups", 1)
    scaling = getattr(module, "scaling", head_dim ** -0.5)
    cos, sin = position_embeddings
    num_heads = None
    mass = torch.full((B,), math.nan, dtype=torch.float64)
    per_head: torch.Tensor | None = None
    for b in range(B):
        q_pos = queries[b].to(hidden.device)
        if q_pos.numel() == 0:
            continue
        hb = hidden[b:b + 1]  # (1, L, d)
        q = _split_heads(module, module.q_proj, "q_norm", hb[:, q_pos], head_dim)  # (1, H, Tq, hd)
        k = _split_heads(module, module.k_proj, "k_norm", hb, head_dim)  # (1, KV, L, hd)
        cb = cos[b:b + 1] if cos.shape[0] > 1 else cos
        sb = sin[b:b + 1] if sin.shape[0] > 1 else sin
        q, _ = rope(q, q, cb[:, q_pos], sb[:, q_pos])
        k, _ = rope(k, k, cb, sb)
        k = k.repeat_interleave(groups, dim=1)  # (1, H, L, hd)
        scores = torch.matmul(q, k.transpose(2, 3)) * scaling  # (1, H, Tq, L)
        if attention_mask is None:
            allowed = torch.arange(L, device=q_pos.device)[None, :] <= q_pos[:, None]  # (Tq, L)
            scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        else:
            m = attention_mask[b if attention_mask.shape[0] > 1 else 0][:, q_pos, :L]  # (1|H, Tq, L)
            if m.dtype == torch.bool:
                scores = scores.masked_fill(~m[None], torch.finfo(scores.dtype).min)
            else:
                scores = scores + m[None]
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)  # as eager does
        share = probs.float()[..., image[b].to(probs.device)].sum(-1)[0]  # (H, Tq)
        if per_head is None:
            num_heads = share.shape[0]
            per_head = torch.full((B, num_heads), math.nan, dtype=torch.float64)
        per_head[b] = share.mean(-1).double().cpu()
        mass[b] = share.double().mean().cpu()
    if per_head is None:
        num_heads = getattr(module.config, "num_attention_heads", 1)
        per_head = torch.full((B, num_heads), math.nan, dtype=torch.float64)
    return mass, per_head
