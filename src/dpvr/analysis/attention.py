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
    max_scores_elements: int = 2 ** 26,
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
        max_scores_elements: queries are processed in chunks so that one score tensor holds at
            most this many elements (256 MB in float32), whatever the sequence length.

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
    dev = hidden.device
    counts = torch.tensor([int(q.numel()) for q in queries])
    Tq = max(1, int(counts.max()))
    q_index = torch.zeros(B, Tq, dtype=torch.long)
    for b, q in enumerate(queries):
        q_index[b, :q.numel()] = q
    q_valid = (torch.arange(Tq)[None, :] < counts[:, None]).to(dev)  # (B, Tq)
    q_index = q_index.to(dev)

    h_q = torch.gather(hidden, 1, q_index[..., None].expand(-1, -1, hidden.shape[-1]))  # (B, Tq, d)
    q = _split_heads(module, module.q_proj, "q_norm", h_q, head_dim)  # (B, H, Tq, hd)
    k = _split_heads(module, module.k_proj, "k_norm", hidden, head_dim)  # (B, KV, L, hd)
    cos, sin = (t.expand(B, -1, -1) for t in position_embeddings)  # (B, L, hd)
    idx = q_index[..., None].expand(-1, -1, cos.shape[-1])
    q, _ = rope(q, q, torch.gather(cos, 1, idx), torch.gather(sin, 1, idx))
    k, _ = rope(k, k, cos, sin)
    k = k.repeat_interleave(groups, dim=1)  # (B, H, L, hd)
    image = image.to(dev)
    H = q.shape[1]
    chunk = max(1, max_scores_elements // max(1, B * H * L))  # bound the (B, H, chunk, L) score tensors
    shares = []
    for c0 in range(0, Tq, chunk):
        qi = q_index[:, c0:c0 + chunk]  # (B, c)
        scores = torch.matmul(q[:, :, c0:c0 + chunk], k.transpose(2, 3)) * scaling  # (B, H, c, L)
        low = torch.finfo(scores.dtype).min
        if attention_mask is None:
            allowed = torch.arange(L, device=dev)[None, None, :] <= qi[:, :, None]  # (B, c, L)
            scores = scores.masked_fill(~allowed[:, None], low)
        else:
            m = attention_mask.expand(B, -1, -1, -1)  # (B, 1|H, L, Lk)
            rows = torch.gather(m, 2, qi[:, None, :, None].expand(-1, m.shape[1], -1, m.shape[3]))[..., :L]
            scores = scores.masked_fill(~rows, low) if rows.dtype == torch.bool else scores + rows
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)  # as eager does
        del scores
        shares.append((probs.float() * image[:, None, None, :]).sum(-1))  # (B, H, c)
        del probs
    share = torch.cat(shares, dim=-1)  # (B, H, Tq)
    n = q_valid.sum(-1, keepdim=True)  # (B, 1)
    per_head = (share * q_valid[:, None, :]).sum(-1) / n.clamp(min=1)  # (B, H)
    per_head = torch.where(n > 0, per_head, torch.full_like(per_head, math.nan)).double().cpu()
    return per_head.mean(-1), per_head
