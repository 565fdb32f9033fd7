"""The routed pass through the decoder stack: shallow layers, side branch, deep layers in their modes.

`routed_decoder_forward` takes the input embeddings (image features already scattered in, as
LLaVA does) and returns the last hidden states in the full view, before the final norm.

Prefill (empty cache): layers ``0..s-1`` run on every position; the side branch runs once on the
prefix that ends with the last image token; each deep layer then runs in its mode:

- ``text``: text view only (B, Lt, d), RoPE gathered at the original positions;
- ``kv``:   text queries; keys/values over the full view, the image ones projected from the side
            output by this layer's input norm and k/v projections (merged in at ``cache.update``);
- ``fuse``: image positions set to the side output, the full layer over the full view.

FastV pruning (plans with ``prune_layer`` k, SPEC §6) comes before all that: layers ``0..k-1``
run on every position; layer ``k-1``'s attention from each sample's last prompt query ranks the
image tokens (recomputed from the q/k projections of that layer's input, so any attention
implementation works); the top ``keep_ratio`` share of each sample's image tokens stays, with every
text position, in a *kept view* (B, Lk) that the rest of the pass treats as its full view: layers
``k..s-1`` run on it, the side branch sees only kept image tokens, ``text`` layers drop the kept
image tokens too. Dropped positions leave the output as they were after layer ``k-1``.

Decode (non-empty cache): every new token is text, so hidden states keep their shape; only the
masks differ per layer, because ``text`` layers hold a shorter cache (no image positions), and
layers after the pruning hold only the kept view.

Masks come from the backbone adapter (``attention_masks`` for a contiguous view, ``view_masks`` for
a view with holes, given each slot's original position), so a family whose layers differ in mask
type (Gemma 3: sliding-window and full layers, bidirectional attention within an image) gets each
layer's own mask in every view; what the adapter returns is opaque here and resolved per layer in
its ``call_layer``. A layer that holds a view with padding slots between real ones (text view,
kept view) keeps every key in its cache: a sliding-window cache layer drops the oldest slots by
count, which behind padding slots would drop keys still inside the window; the mask applies the
window by original position instead.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass
from functools import partial

import torch
from torch.utils.checkpoint import checkpoint
from transformers import DynamicLayer
from transformers.masking_utils import create_causal_mask

from dpvr.config import ResolvedPlan
from dpvr.backbones.base import project_kv, project_q
from dpvr.engine.backbone import Backbone
from dpvr.engine.cache import DPVRCache, ImageKVInjector, RoutedCache, RoutingState
from dpvr.engine.index import RoutingIndex, gather_positions, merge_views
from dpvr.engine.kv_attention import kv_attention_mask
from dpvr.engine.side_branch import SideBranch


def routed_decoder_forward(
    backbone: Backbone,
    plan: ResolvedPlan,
    side: SideBranch,
    input_ids: torch.Tensor,  # (B, q)
    inputs_embeds: torch.Tensor,  # (B, q, d)
    attention_mask: torch.Tensor | None,  # (B, past + q) 2D padding mask, or None
    position_ids: torch.Tensor | None,  # family layout: (B|1, q), or (3|4, B, q) for M-RoPE; None: the family's default
    cache: DPVRCache | None,
    use_cache: bool,
    prompt_len: int | None = None,  # where the prompt ends in input_ids (FastV ranks by its last token)
    extras: dict | None = None,  # family-specific LM inputs (e.g. Qwen3-VL's deepstack features)
) -> torch.Tensor:  # (B, q, d) last hidden states, before the final norm
    past = cache.get_seq_length() if cache is not None else 0
    # Positions as the family's text model derives them: RoPE rows, what layers and masks receive.
    positions = backbone.positions(inputs_embeds, position_ids, cache)
    position_embeddings = backbone.rotary(inputs_embeds, positions)  # (cos, sin), each (B|1, q, head_dim)
    args = _LayerArgs(backbone, plan, cache, use_cache, prompt_len, extras or {})
    full_mask = backbone.attention_masks(
        args.full_view_layers,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        cache=cache,
        position_ids=positions.mask,
        extras=args.extras if past == 0 else None,  # decode: the new tokens are text
    )
    if past == 0:
        return _prefill(args, side, input_ids, inputs_embeds, attention_mask, positions, position_embeddings, full_mask)
    return _decode(args, input_ids, inputs_embeds, attention_mask, positions.layer, position_embeddings, full_mask)


class _LayerArgs:
    """What every layer call shares in one forward pass."""

    def __init__(self, backbone: Backbone, plan: ResolvedPlan, cache, use_cache: bool, prompt_len: int | None = None,
                 extras: dict | None = None):
        self.backbone, self.plan, self.cache, self.use_cache = backbone, plan, cache, use_cache
        self.prompt_len = prompt_len
        self.extras = extras or {}
        text_layers = plan.layers_with_mode("text")
        self.text_layers = text_layers
        self.first_text_layer = text_layers[0] if text_layers else None
        # Layers after FastV's pruning (other than text layers) hold the kept view of the prompt.
        self.kept_layers = [] if plan.prune_layer is None else [
            i for i in range(plan.prune_layer, plan.num_layers) if plan.modes[i] != "text"
        ]
        kept = set(self.kept_layers)
        self.full_view_layers = [i for i in range(plan.num_layers) if plan.modes[i] != "text" and i not in kept]

    def keep_every_key(self, layers) -> None:
        """Layers ``layers`` hold a view with padding slots between real ones: their cache must not drop slots by count."""
        cache = self.cache
        if cache is None or not hasattr(cache, "layers"):
            return
        for i in layers:
            if i < len(cache.layers) and getattr(cache.layers[i], "is_sliding", False):
                cache.layers[i] = DynamicLayer()

    def run(self, layer_idx: int, hidden, mask, position_ids, position_embeddings, cache="default"):
        return self.backbone.call_layer(
            self.backbone.layers[layer_idx], hidden, mask, position_ids,
            self.cache if cache == "default" else cache, self.use_cache, position_embeddings,
        )

    def run_shallow(self, layer_idx: int, view: "_View") -> torch.Tensor:
        """A shallow layer over the full prompt, then what the family adds after it (e.g. deepstack)."""
        hidden = self.run(layer_idx, view.hidden, view.mask, view.position_ids, view.position_embeddings)
        return self.backbone.after_layer(layer_idx, hidden, self.extras, view.is_image)


@dataclass
class _RoutingState(RoutingState):
    """`RoutingState` plus where each text-view slot sits in the full view (masks by original position at decode)."""

    text_positions: torch.Tensor | None = None  # (B, Lt)

    def _map(self, fn) -> "_RoutingState":
        out = super()._map(fn)
        return _RoutingState(**vars(out), text_positions=None if self.text_positions is None else fn(self.text_positions))


@dataclass
class _View:
    """The sequence a run of layers works on: the full prompt, or what FastV kept of it (B, Lv)."""

    hidden: torch.Tensor  # (B, Lv, d)
    is_image: torch.Tensor  # (B, Lv) bool
    valid: torch.Tensor | None  # (B, Lv) bool: real slots (None: all are)
    attention_mask: torch.Tensor | None  # (B, Lv) 2D padding mask (None: no padding)
    position_ids: torch.Tensor | None  # (B|1, Lv) original positions as decoder layers receive them (None: family passes none)
    position_embeddings: tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each (B|1, Lv, head_dim)
    mask: object  # causal mask of a layer over every slot of this view
    mask_position_ids: torch.Tensor | None  # positions for the mask helpers; None where positions have holes
    slots: torch.Tensor | None = None  # (B, Lv) full-view position of each slot (None: the full view itself)

    def slot_positions(self) -> torch.Tensor:
        if self.slots is not None:
            return self.slots
        batch, length = self.is_image.shape
        return torch.arange(length, device=self.is_image.device).expand(batch, -1)


def _prefill(args: _LayerArgs, side, input_ids, hidden, attention_mask, positions, position_embeddings, full_mask):
    plan = args.plan
    is_image = args.backbone.visual_mask(input_ids)  # (B, L): image and/or video placeholders
    view = _View(hidden, is_image, None, attention_mask, positions.layer, position_embeddings, full_mask, positions.mask)
    first, prune, dropped = 0, None, None
    if plan.prune_layer is not None:
        # --- FastV: full layers up to k-1, rank the image tokens by layer k-1's attention, keep the top R %
        k = plan.prune_layer
        for layer_idx in range(k - 1):
            view.hidden = args.run_shallow(layer_idx, view)
        if plan.keep_ratio > 0 and bool(is_image.any()):
            view.hidden, scores = _run_and_score(args, k - 1, view)  # scores (B, L)
            keep = _fastv_keep(scores, is_image, plan.keep_ratio)
        else:  # nothing to rank: every image token goes
            view.hidden = args.run(k - 1, view.hidden, view.mask, view.position_ids, view.position_embeddings)
            keep = ~is_image
        prune = RoutingIndex.from_mask(~keep)  # "text view" = kept positions, "image view" = dropped ones
        dropped = gather_positions(view.hidden, prune.image_idx)  # (B, Ld, d): left as they were at the drop
        view = _kept_view(args, view, prune, k)
        first = k
    # layout-only work first (see _DeepSetup); after FastV's pruning the kept view decides it
    setup = _deep_setup(args, side, view, prune, prompt_len=input_ids.shape[1])
    for layer_idx in range(first, plan.split):
        view.hidden = args.run_shallow(layer_idx, view) if prune is None else args.run(
            layer_idx, view.hidden, view.mask, view.position_ids, view.position_embeddings)
    out = _deep(args, side, view, prune, prompt_len=input_ids.shape[1], setup=setup)  # (B, Lv, d)
    return out if prune is None else merge_views(out, dropped, prune)  # (B, L, d)


@dataclass
class _DeepSetup:
    """Everything the deep stack needs that depends on the prompt's layout only, not on hidden states.

    Built before the first layer runs (when nothing is pruned), so its host reads (``int``/``bool`` of
    device tensors: view lengths, whether padding exists) wait on an almost empty device queue instead
    of draining it between the shallow and the deep stack, where short text-only layers would then be
    launched from an idle device.
    """

    state: RoutingState
    index: RoutingIndex | None = None
    side_mask: object = None
    text_position_ids: torch.Tensor | None = None
    text_position_embeddings: tuple | None = None
    text_mask: object = None
    kv_mask: torch.Tensor | None = None


def _deep_setup(args: _LayerArgs, side, view: _View, prune: RoutingIndex | None, prompt_len: int) -> _DeepSetup:
    backbone, plan = args.backbone, args.plan
    hidden = view.hidden  # used for its shape, dtype and device only
    state = _RoutingState(text_key_valid=None, prompt_len=prompt_len)
    if prune is not None:
        state.kept_key_valid = view.attention_mask if view.attention_mask is not None else prune.text_valid
        state.kept_positions = prune.text_idx
    setup = _DeepSetup(state)
    if not plan.deep_layers:
        return setup
    index = setup.index = RoutingIndex.from_mask(view.is_image, view.valid)
    if index.has_images and side is not None:
        p = index.prefix_len
        setup.side_mask = backbone.attention_masks(
            [plan.split + j for j in range(plan.side_depth)],  # the side layers are copies of these
            inputs_embeds=hidden[:, :p],
            attention_mask=view.attention_mask[:, :p] if view.attention_mask is not None else None,
            cache=None,
            position_ids=view.mask_position_ids[..., :p] if view.mask_position_ids is not None else None,
            extras=args.extras,
        ) if view.slots is None else backbone.view_masks(
            [plan.split + j for j in range(plan.side_depth)],
            query_positions=view.slots[:, :p],
            key_positions=view.slots[:, :p],
            key_valid=view.attention_mask[:, :p].bool() if view.attention_mask is not None else view.valid[:, :p],
            dtype=hidden.dtype,
            extras=args.extras,
            default=lambda: create_causal_mask(
                config=backbone.text_config,
                inputs_embeds=hidden[:, :p],
                attention_mask=view.attention_mask[:, :p] if view.attention_mask is not None else None,
                cache=None,
                position_ids=None,
            ),
        )
    # --- text view: RoPE at the original positions, causal in original order, own padding mask
    setup.text_position_ids = _layer_positions(backbone, _gather_or_none(view.position_ids, index.text_idx))  # (B, Lt)
    setup.text_position_embeddings = tuple(gather_positions(t, index.text_idx) for t in view.position_embeddings)
    text_key_valid = index.text_valid
    if view.attention_mask is not None:
        text_key_valid = text_key_valid & gather_positions(view.attention_mask.bool(), index.text_idx)
    slots = view.slot_positions()  # (B, Lv) original position of each view slot
    text_positions = gather_positions(slots, index.text_idx)  # (B, Lt)
    if args.first_text_layer is not None:
        args.keep_every_key(args.text_layers)
        setup.text_mask = backbone.view_masks(
            args.text_layers,
            query_positions=text_positions,
            key_positions=text_positions,
            key_valid=text_key_valid,
            dtype=hidden.dtype,
            extras=args.extras,
            default=lambda: create_causal_mask(
                config=backbone.text_config,
                inputs_embeds=hidden.new_empty(index.text_idx.shape[0], index.text_idx.shape[1], 0),  # (B, Lt, -)
                attention_mask=None if bool(text_key_valid.all()) else text_key_valid,
                cache=args.cache,
                position_ids=None,  # original positions have holes; the mask is causal in view order
                layer_idx=args.first_text_layer,
            ),
        )
    if "kv" in plan.modes:
        full_key_valid = view.attention_mask.bool() if view.attention_mask is not None else (
            view.valid if view.valid is not None else torch.ones_like(view.is_image))
        setup.kv_mask = backbone.view_masks(
            plan.layers_with_mode("kv"),
            query_positions=text_positions,
            key_positions=slots,
            key_valid=full_key_valid,
            dtype=hidden.dtype,
            extras=args.extras,
            default=lambda: _kv_mask(
                index, view.attention_mask, hidden.shape[1], hidden.dtype, backbone.text_config),
        )
    state.text_key_valid = text_key_valid
    state.text_positions = text_positions
    return setup


def _deep(args: _LayerArgs, side, view: _View, prune: RoutingIndex | None, prompt_len: int,
          setup: _DeepSetup | None = None) -> torch.Tensor:
    """Side branch and deep layers over ``view``; returns the view's hidden states (B, Lv, d)."""
    plan = args.plan
    setup = setup or _deep_setup(args, side, view, prune, prompt_len)
    hidden = view.hidden
    if isinstance(args.cache, RoutedCache):
        args.cache.routing = setup.state
    if not plan.deep_layers:  # FastV alone: nothing routed after the pruning
        return hidden
    index = setup.index

    # --- split: side branch over the prefix that ends with the last image token
    if index.has_images and side is not None:
        p = index.prefix_len
        cos, sin = view.position_embeddings
        side_positions = view.position_ids[..., :p] if view.position_ids is not None else None
        side_out = side(hidden[:, :p], setup.side_mask, side_positions, (cos[:, :p], sin[:, :p]), args.backbone)  # (B, P, d)
        side_image = gather_positions(side_out, index.image_idx)  # (B, Li, d)
    else:  # no image, or no side branch (VTW): image states stay as they are at the split
        side_image = gather_positions(hidden, index.image_idx)  # (B, Li, d)
    image_hidden = side_image  # image states as the deep stack leaves them
    text_hidden = gather_positions(hidden, index.text_idx)  # (B, Lt, d)
    text_position_ids, text_position_embeddings = setup.text_position_ids, setup.text_position_embeddings
    text_mask, kv_mask = setup.text_mask, setup.kv_mask

    for layer_idx in plan.deep_layers:
        mode = plan.modes[layer_idx]
        if mode == "text":
            text_hidden = args.run(layer_idx, text_hidden, text_mask, text_position_ids, text_position_embeddings)
        elif mode == "fuse":
            full = merge_views(text_hidden, side_image, index)  # (B, Lv, d), image positions = side output
            full = args.run(layer_idx, full, view.mask, view.position_ids, view.position_embeddings)
            text_hidden = gather_positions(full, index.text_idx)
            image_hidden = gather_positions(full, index.image_idx)
        elif mode == "kv":
            text_hidden = _run_kv_layer(
                args, layer_idx, text_hidden, side_image, index, kv_mask, text_position_ids,
                text_position_embeddings, view.position_embeddings,
            )
        else:  # pragma: no cover - plans only hold the modes above in the deep stack
            raise AssertionError(f"unexpected mode {mode!r} in the deep stack")
    return merge_views(text_hidden, image_hidden, index)  # (B, Lv, d)


def _decode(args: _LayerArgs, input_ids, hidden, attention_mask, position_ids, position_embeddings, full_mask):
    backbone, plan, cache = args.backbone, args.plan, args.cache
    if bool(backbone.visual_mask(input_ids).any()):
        raise ValueError(
            "image tokens after the prompt: a routed model takes images in the first (prefill) call only; "
            "suppress the image token in generation (suppress_tokens=[image_token_id])"
        )
    kept_layers = args.kept_layers
    text_mask = kept_mask = None
    if args.first_text_layer is not None or kept_layers:
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

        new = torch.arange(state.prompt_len, seen + q_len, device=hidden.device).expand(batch, -1)  # (B, seen - L + q)

        def view_mask(prompt_keys, prompt_positions, layers):
            return backbone.view_masks(
                layers,
                query_positions=new[:, -q_len:],
                key_positions=None if prompt_positions is None else torch.cat([prompt_positions, new], dim=1),
                key_valid=torch.cat([prompt_keys, tail], dim=1),
                dtype=hidden.dtype,
                extras=None,  # the new tokens are text
                default=lambda: create_causal_mask(
                    config=backbone.text_config,
                    inputs_embeds=hidden,
                    attention_mask=torch.cat([prompt_keys, tail], dim=1),
                    cache=cache,
                    position_ids=None,
                    layer_idx=layers[0],
                ),
            )

        if args.first_text_layer is not None:
            text_mask = view_mask(state.text_key_valid, getattr(state, "text_positions", None), args.text_layers)
        if kept_layers:
            kept_mask = view_mask(state.kept_key_valid, state.kept_positions, kept_layers)
    kept = set(kept_layers)
    for layer_idx in range(plan.num_layers):
        if plan.modes[layer_idx] == "text":
            mask = text_mask
        else:
            mask = kept_mask if layer_idx in kept else full_mask
        hidden = args.run(layer_idx, hidden, mask, position_ids, position_embeddings)
    return hidden


def _gather_or_none(x: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor | None:
    return None if x is None else gather_positions(x, idx)


def _layer_positions(backbone: Backbone, positions: torch.Tensor | None) -> torch.Tensor | None:
    """Positions a layer receives for a view with holes: none under flash_attention_2, which reads
    non-contiguous positions as packed sequences (RoPE comes from the gathered embeddings anyway)."""
    return None if backbone.text_config._attn_implementation == "flash_attention_2" else positions


# ----------------------------------------------------------------------------- FastV
def _run_and_score(args: _LayerArgs, layer_idx: int, view: _View) -> tuple[torch.Tensor, torch.Tensor]:
    """Run layer ``layer_idx`` over ``view`` and return (its output, FastV's score of every key position).

    The score is the head-mean attention probability from each sample's last real query to every key,
    recomputed from the q/k projections of the exact input the layer's attention received (captured by
    a pre-hook), so it does not depend on the attention implementation (sdpa returns no weights).
    """
    attn = args.backbone.layers[layer_idx].self_attn
    captured = {}

    def grab(module, a, kw):
        captured["normed"] = kw["hidden_states"] if "hidden_states" in kw else a[0]
        captured["mask"] = kw.get("attention_mask")  # the layer's own mask (its type's: sliding window, ...)

    handle = attn.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        out = args.run(layer_idx, view.hidden, view.mask, view.position_ids, view.position_embeddings)
    finally:
        handle.remove()
    scores = last_query_attention(attn, captured["normed"], view.position_embeddings, view.attention_mask, args.prompt_len,
                                  apply_rotary=args.backbone.apply_rotary(attn), layer_mask=captured["mask"])
    return out, scores


def last_query_attention(attn, normed: torch.Tensor, position_embeddings, attention_mask,
                         prompt_len: int | None = None, apply_rotary=None, layer_mask=None) -> torch.Tensor:
    """Head-mean attention probabilities (B, L) of each sample's last real prompt query over its keys.

    ``normed`` (B, L, d) is the attention module's input (after the layer's input norm); the
    computation follows eager attention (RoPE, grouped K/V, scaling, float32 softmax). The query is
    each sample's last unpadded position before ``prompt_len`` (default: the whole input), so the
    ranking of a prompt does not change when generated tokens are appended to it. ``apply_rotary``:
    the family's (the adapter's ``apply_rotary(attn)``); default: the attention module's own.
    ``layer_mask``: the 4-D mask the layer's attention received (bool, or additive float), if any; the
    query then sees only the keys it allows too (a sliding-window layer's window, say).
    """
    batch, length, _ = normed.shape
    positions = torch.arange(length, device=normed.device)
    real = torch.ones(batch, length, dtype=torch.bool, device=normed.device)
    if attention_mask is not None:
        real = attention_mask.bool()
    if prompt_len is not None:
        real = real & (positions < prompt_len)[None, :]
    last = torch.where(real, positions, -1).max(1).values.clamp(min=0)  # (B,)
    allowed = real & (positions[None, :] <= last[:, None])  # (B, L)
    if isinstance(layer_mask, torch.Tensor) and layer_mask.dim() == 4 and layer_mask.shape[-1] == length:
        row = layer_mask[:, 0].expand(batch, -1, -1).gather(1, last[:, None, None].expand(-1, 1, length))[:, 0]  # (B, L)
        allowed = allowed & (row if row.dtype == torch.bool else row > torch.finfo(row.dtype).min / 2)
    q = project_q(attn, gather_positions(normed, last[:, None]))  # (B, H, 1, hd)
    k, _ = project_kv(attn, normed)  # (B, H_kv, L, hd)
    cos, sin = position_embeddings
    apply_rotary = apply_rotary or sys.modules[type(attn).__module__].apply_rotary_pos_emb
    q, _ = apply_rotary(q, q, gather_positions(cos, last[:, None]), gather_positions(sin, last[:, None]))
    _, k = apply_rotary(k, k, cos, sin)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # (B, H, L, hd), as repeat_kv
    logits = torch.matmul(q, k.transpose(2, 3)) * attn.scaling  # (B, H, 1, L)
    logits = logits.float().masked_fill(~allowed[:, None, None, :], float("-inf"))
    return torch.softmax(logits, dim=-1).mean(dim=1)[:, 0]  # (B, L)


def _fastv_keep(scores: torch.Tensor, is_image: torch.Tensor, ratio: float) -> torch.Tensor:
    """(B, L) bool: every non-image position, and each sample's round(ratio * I) best-scored image tokens."""
    n_keep = torch.round(is_image.sum(1).double() * ratio).long()  # (B,), round half to even like Python
    ranked = scores.masked_fill(~is_image, float("-inf"))
    order = ranked.argsort(dim=1, descending=True, stable=True)  # (B, L)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return ~is_image | (rank < n_keep[:, None])


def _kept_view(args: _LayerArgs, view: _View, prune: RoutingIndex, layer_idx: int) -> _View:
    """The kept positions of ``view`` (B, Lk), in order, with their original RoPE positions and own mask."""
    idx, valid = prune.text_idx, prune.text_valid  # (B, Lk)
    key_valid = valid
    if view.attention_mask is not None:
        key_valid = valid & gather_positions(view.attention_mask.bool(), idx)
    hidden = gather_positions(view.hidden, idx)  # (B, Lk, d)
    args.keep_every_key(args.kept_layers)
    mask = args.backbone.view_masks(
        args.kept_layers,
        query_positions=idx,
        key_positions=idx,
        key_valid=key_valid,
        dtype=hidden.dtype,
        extras=args.extras,
        default=lambda: create_causal_mask(
            config=args.backbone.text_config,
            inputs_embeds=hidden,
            attention_mask=None if bool(key_valid.all()) else key_valid,
            cache=args.cache,
            position_ids=None,  # kept positions have holes; the mask is causal in view order
            layer_idx=layer_idx,
        ),
    )
    return _View(
        hidden=hidden,
        is_image=gather_positions(view.is_image, idx) & valid,
        valid=valid,
        attention_mask=key_valid,
        position_ids=_layer_positions(args.backbone, _gather_or_none(view.position_ids, idx)),
        position_embeddings=tuple(gather_positions(t, idx) for t in view.position_embeddings),
        mask=mask,
        mask_position_ids=None,
        slots=idx,
    )


# ----------------------------------------------------------------------------- kv mode
def _kv_mask(index: RoutingIndex, attention_mask, length: int, dtype, text_config):
    """Mask for text-view queries against full-view keys (key position <= query's original position), once per
    prefill for every kv layer: mask-free kernels where the layout allows (`dpvr.engine.kv_attention`)."""
    impl = text_config._attn_implementation
    if impl not in ("sdpa", "eager"):
        raise NotImplementedError(_KV_NEEDS_MASK.format(impl=impl))
    return kv_attention_mask(index, attention_mask, length, dtype, impl)


def check_attention(plan: ResolvedPlan, text_config) -> None:
    """Refuse, in one line, an attention implementation this plan cannot run on (called when wrapping)."""
    impl = text_config._attn_implementation
    if impl == "flash_attention_2":
        import importlib.util

        if importlib.util.find_spec("flash_attn") is None:
            raise ValueError("attn_implementation='flash_attention_2' needs the flash_attn package (CUDA only), "
                             "which is not importable here: pip install flash-attn, or load the model with "
                             "attn_implementation='sdpa'")
        if "kv" in plan.modes:
            raise ValueError(_KV_NEEDS_MASK.format(impl=impl))


_KV_NEEDS_MASK = ("variant 'kv' attends from text queries to every key up to each query's original position, which "
                  "needs an explicit mask that attn_implementation {impl!r} cannot take; load the model with "
                  "attn_implementation='sdpa' (or 'eager') for kv — lf, pc, ideal, fastv and vtw run on {impl!r}")


def _image_kv_merge(backbone, layer, side_image, index: RoutingIndex, position_embeddings, text_keys, text_values):
    """Project the side output into this layer's K/V at the image positions; merge with the text K/V.

    text_keys/values: (B, H_kv, Lt, hd) -> returns (B, H_kv, L, hd) in full-view order.
    """
    attn = layer.self_attn
    x = layer.input_layernorm(side_image)  # (B, Li, d)
    keys, values = project_kv(attn, x)  # (B, H_kv, Li, hd) each
    cos, sin = (gather_positions(t, index.image_idx) for t in position_embeddings)  # (B, Li, hd)
    apply_rotary = backbone.apply_rotary(attn)
    _, keys = apply_rotary(keys, keys, cos, sin)
    merged_keys = index.merge(text_keys, keys.to(text_keys.dtype), dim=2)  # (B, H_kv, L, hd)
    merged_values = index.merge(text_values, values.to(text_values.dtype), dim=2)
    return merged_keys, merged_values


def _run_kv_layer(args, layer_idx, text_hidden, side_image, index, kv_mask, text_position_ids,
                  text_position_embeddings, position_embeddings):
    layer = args.backbone.layers[layer_idx]

    def call(forward, hidden, image):
        injector = ImageKVInjector(partial(_image_kv_merge, args.backbone, layer, image, index, position_embeddings),
                                   inner=args.cache)
        return args.backbone.call_layer(forward, hidden, kv_mask, text_position_ids, injector, args.use_cache,
                                        text_position_embeddings)

    if getattr(layer, "gradient_checkpointing", False) and layer.training and torch.is_grad_enabled():
        # The layer's own checkpointing would drop the cache argument that carries the image K/V;
        # checkpoint the unwrapped forward instead, with a fresh injector on every recompute.
        raw_forward = partial(inspect.unwrap(type(layer).forward), layer)
        return checkpoint(call, raw_forward, text_hidden, side_image, use_reentrant=False)
    return call(layer, text_hidden, side_image)
