"""The routed pass through the decoder stack: shallow layers, side branch, deep layers in their modes.

`routed_decoder_forward` takes the input embeddings (image features already scattered in, as
LLaVA does) and returns the last hidden states in the full view, before the final norm.

Prefill (empty cache): layers ``0..s-1`` run on every position; the side branch runs once on the
prefix that ends with the last image token; each deep layer then runs in its mode:

- ``text``: text view only (B, Lt, d), RoPE gathered at the original positions;
- ``kv``:   text queries; keys/values over the full view, the image ones projected from the side
            output by this layer's input norm and k/v projections (merged in at ``cache.update``);
- ``fuse``: image positions set to the side output, the full layer over the full view.

Decode (non-empty cache): every new token is text, so hidden states keep their shape; only the
masks differ per layer, because ``text`` layers hold a shorter cache (no image positions).
"""

from __future__ import annotations

import inspect
import sys
from functools import partial

import torch
from torch.utils.checkpoint import checkpoint
from transformers.masking_utils import create_causal_mask

from dpvr.config import ResolvedPlan
from dpvr.engine.backbone import Backbone
from dpvr.engine.cache import DPVRCache, ImageKVInjector, RoutingState
from dpvr.engine.index import RoutingIndex, gather_positions, merge_views
from dpvr.engine.side_branch import SideBranch


def routed_decoder_forward(
    backbone: Backbone,
    plan: ResolvedPlan,
    side: SideBranch,
    input_ids: torch.Tensor,  # (B, q)
    inputs_embeds: torch.Tensor,  # (B, q, d)
    attention_mask: torch.Tensor | None,  # (B, past + q) 2D padding mask, or None
    position_ids: torch.Tensor | None,  # (B|1, q)
    cache: DPVRCache | None,
    use_cache: bool,
) -> torch.Tensor:  # (B, q, d) last hidden states, before the final norm
    past = cache.get_seq_length() if cache is not None else 0
    q_len = inputs_embeds.shape[1]
    if position_ids is None:
        position_ids = torch.arange(past, past + q_len, device=inputs_embeds.device).unsqueeze(0)
    position_embeddings = backbone.rotary_emb(inputs_embeds, position_ids)  # (cos, sin), each (B|1, q, head_dim)
    full_mask = create_causal_mask(
        config=backbone.text_config,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        cache=cache,
        position_ids=position_ids,
        layer_idx=0,
    )
    args = _LayerArgs(backbone, plan, cache, use_cache)
    if past == 0:
        return _prefill(args, side, input_ids, inputs_embeds, attention_mask, position_ids, position_embeddings, full_mask)
    return _decode(args, input_ids, inputs_embeds, attention_mask, position_ids, position_embeddings, full_mask)


class _LayerArgs:
    """What every layer call shares in one forward pass."""

    def __init__(self, backbone: Backbone, plan: ResolvedPlan, cache, use_cache: bool):
        self.backbone, self.plan, self.cache, self.use_cache = backbone, plan, cache, use_cache
        text_layers = plan.layers_with_mode("text")
        self.first_text_layer = text_layers[0] if text_layers else None

    def run(self, layer_idx: int, hidden, mask, position_ids, position_embeddings, cache="default"):
        return self.backbone.layers[layer_idx](
            hidden,
            attention_mask=mask,
            position_ids=position_ids,
            cache=self.cache if cache == "default" else cache,
            use_cache=self.use_cache,
            position_embeddings=position_embeddings,
        )


def _prefill(args: _LayerArgs, side, input_ids, hidden, attention_mask, position_ids, position_embeddings, full_mask):
    backbone, plan = args.backbone, args.plan
    index = RoutingIndex.from_input_ids(input_ids, backbone.image_token_id)
    for layer_idx in range(plan.split):
        hidden = args.run(layer_idx, hidden, full_mask, position_ids, position_embeddings)  # (B, L, d)

    # --- split: side branch over the prefix that ends with the last image token
    if index.has_images:
        p = index.prefix_len
        side_mask = create_causal_mask(
            config=backbone.text_config,
            inputs_embeds=hidden[:, :p],
            attention_mask=attention_mask[:, :p] if attention_mask is not None else None,
            cache=None,
            position_ids=position_ids[..., :p],
        )
        cos, sin = position_embeddings
        side_out = side(hidden[:, :p], side_mask, position_ids[..., :p], (cos[:, :p], sin[:, :p]))  # (B, P, d)
        side_image = gather_positions(side_out, index.image_idx)  # (B, Li, d)
    else:
        side_image = hidden[:, :0]  # (B, 0, d)
    image_hidden = side_image  # image states as the deep stack leaves them
    text_hidden = gather_positions(hidden, index.text_idx)  # (B, Lt, d)

    # --- text view: RoPE at the original positions, causal in original order, own padding mask
    text_position_ids = gather_positions(position_ids, index.text_idx)  # (B, Lt)
    text_position_embeddings = tuple(gather_positions(t, index.text_idx) for t in position_embeddings)
    text_key_valid = index.text_valid
    if attention_mask is not None:
        text_key_valid = text_key_valid & gather_positions(attention_mask.bool(), index.text_idx)
    text_mask = None
    if args.first_text_layer is not None:
        text_mask = create_causal_mask(
            config=backbone.text_config,
            inputs_embeds=text_hidden,
            attention_mask=None if bool(text_key_valid.all()) else text_key_valid,
            cache=args.cache,
            position_ids=None,  # original positions have holes; the mask is causal in view order
            layer_idx=args.first_text_layer,
        )
    kv_mask = None
    if "kv" in plan.modes:
        kv_mask = _text_query_full_key_mask(index, attention_mask, hidden.shape[1], hidden.dtype, backbone.text_config)
    if isinstance(args.cache, DPVRCache):
        args.cache.routing = RoutingState(text_key_valid=text_key_valid, prompt_len=hidden.shape[1])

    for layer_idx in plan.deep_layers:
        mode = plan.modes[layer_idx]
        if mode == "text":
            text_hidden = args.run(layer_idx, text_hidden, text_mask, text_position_ids, text_position_embeddings)
        elif mode == "fuse":
            full = merge_views(text_hidden, side_image, index)  # (B, L, d), image positions = side output
            full = args.run(layer_idx, full, full_mask, position_ids, position_embeddings)
            text_hidden = gather_positions(full, index.text_idx)
            image_hidden = gather_positions(full, index.image_idx)
        elif mode == "kv":
            text_hidden = _run_kv_layer(
                args, layer_idx, text_hidden, side_image, index, kv_mask, text_position_ids,
                text_position_embeddings, position_embeddings,
            )
        else:  # pragma: no cover - plans only hold the modes above in the deep stack
            raise AssertionError(f"unexpected mode {mode!r} in the deep stack")
    return merge_views(text_hidden, image_hidden, index)  # (B, L, d)


def _decode(args: _LayerArgs, input_ids, hidden, attention_mask, position_ids, position_embeddings, full_mask):
    backbone, plan, cache = args.backbone, args.plan, args.cache
    if bool((input_ids == backbone.image_token_id).any()):
        raise ValueError(
            "image tokens after the prompt: a routed model takes images in the first (prefill) call only; "
            "suppress the image token in generation (suppress_tokens=[image_token_id])"
        )
    text_mask = None
    if args.first_text_layer is not None:
        state = getattr(cache, "routing", None)
        if state is None:
            raise ValueError(
                "decoding a routed model needs the DPVRCache returned by its prefill call "
                "(pass cache=outputs.cache, or use model.generate)"
            )
        batch, q_len = hidden.shape[:2]
        seen = cache.get_seq_length()  # full-view positions before these tokens
        if attention_mask is not None:
            tail = attention_mask[:, state.prompt_len :].bool()  # (B, seen - L + q)
        else:
            tail = torch.ones(batch, seen - state.prompt_len + q_len, dtype=torch.bool, device=hidden.device)
        text_mask = create_causal_mask(
            config=backbone.text_config,
            inputs_embeds=hidden,
            attention_mask=torch.cat([state.text_key_valid, tail], dim=1),
            cache=cache,
            position_ids=None,
            layer_idx=args.first_text_layer,
        )
    for layer_idx in range(plan.num_layers):
        mask = text_mask if plan.modes[layer_idx] == "text" else full_mask
        hidden = args.run(layer_idx, hidden, mask, position_ids, position_embeddings)
    return hidden


# ----------------------------------------------------------------------------- kv mode
def _text_query_full_key_mask(index: RoutingIndex, attention_mask, length: int, dtype, text_config):
    """Mask for text-view queries against full-view keys: key position <= query's original position."""
    impl = text_config._attn_implementation
    if impl not in ("sdpa", "eager"):
        raise NotImplementedError(f"variant 'kv' needs an explicit mask; use attn_implementation 'sdpa' or 'eager', not {impl!r}")
    keys = torch.arange(length, device=index.text_idx.device)
    allowed = keys[None, None, :] <= index.text_idx[:, :, None]  # (B, Lt, L)
    if attention_mask is not None:
        allowed = allowed & attention_mask.bool()[:, None, :]
    allowed = allowed[:, None]  # (B, 1, Lt, L)
    if impl == "sdpa":
        return allowed
    return torch.where(allowed, torch.zeros((), dtype=dtype, device=allowed.device), torch.finfo(dtype).min)


def _image_kv_merge(layer, side_image, index: RoutingIndex, position_embeddings, text_keys, text_values):
    """Project the side output into this layer's K/V at the image positions; merge with the text K/V.

    text_keys/values: (B, H_kv, Lt, hd) -> returns (B, H_kv, L, hd) in full-view order.
    """
    attn = layer.self_attn
    batch, n_image = side_image.shape[:2]
    x = layer.input_layernorm(side_image)  # (B, Li, d)
    keys = attn.k_proj(x)  # (B, Li, H_kv * hd)
    shape = (batch, n_image, keys.shape[-1] // attn.head_dim, attn.head_dim)
    keys = keys.view(shape).transpose(1, 2)  # (B, H_kv, Li, hd)
    values = attn.v_proj(x).view(shape).transpose(1, 2)
    cos, sin = (gather_positions(t, index.image_idx) for t in position_embeddings)  # (B, Li, hd)
    apply_rotary = sys.modules[type(attn).__module__].apply_rotary_pos_emb
    _, keys = apply_rotary(keys, keys, cos, sin)
    idx = index.merge_idx[:, None, :, None].expand(-1, keys.shape[1], -1, keys.shape[-1])  # (B, H_kv, L, hd)
    merged_keys = torch.cat([text_keys, keys.to(text_keys.dtype)], dim=2).gather(2, idx)
    merged_values = torch.cat([text_values, values.to(text_values.dtype)], dim=2).gather(2, idx)
    return merged_keys, merged_values


def _run_kv_layer(args, layer_idx, text_hidden, side_image, index, kv_mask, text_position_ids,
                  text_position_embeddings, position_embeddings):
    layer = args.backbone.layers[layer_idx]

    def call(forward, hidden, image):
        injector = ImageKVInjector(partial(_image_kv_merge, layer, image, index, position_embeddings), inner=args.cache)
        return forward(hidden, attention_mask=kv_mask, position_ids=text_position_ids, cache=injector,
                       use_cache=args.use_cache, position_embeddings=text_position_embeddings)

    if getattr(layer, "gradient_checkpointing", False) and layer.training and torch.is_grad_enabled():
        # The layer's own checkpointing would drop the cache argument that carries the image K/V;
        # checkpoint the unwrapped forward instead, with a fresh injector on every recompute.
        raw_forward = partial(inspect.unwrap(type(layer).forward), layer)
        return checkpoint(call, raw_forward, text_hidden, side_image, use_reentrant=False)
    return call(layer, text_hidden, side_image)
