"""Gemma 3: sliding-window and full-attention layers, and bidirectional attention within each image.

Gemma 3's layers alternate between two types (``config.text_config.layer_types``): ``sliding_attention``
layers see the last ``sliding_window`` positions, ``full_attention`` layers everything before them,
and each type has its own rotary embedding (``rotary_emb(x, positions, layer_type)``: another base
frequency, another scaling). At prefill the image tokens (``token_type_ids == 1``) also attend to
every token of their own image, later ones included: full layers OR(causal, same image), sliding
layers AND(window, OR(causal, same image)), as ``create_masks_for_vision_model`` builds them.

What the engine gets from this adapter, in every view (full, side branch, text view, FastV's kept
view, text queries over full keys, and their decode steps):

- ``rotary``: the (cos, sin) of every layer type stacked on an axis before ``head_dim``; the engine
  gathers and slices them along the sequence as it does any (cos, sin), `call_layer` and
  `apply_rotary` pick the layer's own type;
- ``attention_masks`` (contiguous views): one mask per layer type, sized for a layer of that type
  among the layers that use it, with the image blocks at prefill;
- ``view_masks`` (views with holes): one explicit mask per layer type by original position — causal,
  the window measured in the full view's positions, the image blocks of the kept view — so a text
  view or kept view sees exactly the keys its layer type would see there in the unrouted model.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from dpvr.backbones.base import BackboneAdapter, LMInputs
from dpvr.backbones.registry import register


def _block_ids(token_type_ids: torch.Tensor) -> torch.Tensor:
    """(B, L): the index of the image each position belongs to (contiguous runs of type 1), -1 for text."""
    from transformers.models.gemma3.modeling_gemma3 import get_block_sequence_ids_for_mask

    return get_block_sequence_ids_for_mask(token_type_ids, device=token_type_ids.device)


@register
class Gemma3Adapter(BackboneAdapter):
    model_types = ("gemma3",)
    family = "Gemma 3"
    visual_token_attrs = {"image": "image_token_id"}
    bidirectional_visual = True

    @classmethod
    def visual_runs(cls, config, visual, processor: dict) -> tuple[list[tuple[str, int]], int]:
        """``mm_tokens_per_image`` (256) per image, written ``<start_of_image>`` … ``<end_of_image>\\n\\n``."""
        return [("text", 1), ("image", config.mm_tokens_per_image), ("text", 2)], 1

    def __init__(self, model: nn.Module, route: str = "all"):
        super().__init__(model, route)
        self.layer_types: list[str] = list(self.text_config.layer_types)
        self.types: list[str] = sorted(set(self.layer_types))  # order of the stacked rotary axis
        self.sliding_window = int(self.text_config.sliding_window)

    # ------------------------------------------------------------------ inputs
    def lm_inputs(self, input_ids, attention_mask, position_ids, cache, **mm_inputs) -> LMInputs:
        """As the base, and keep ``token_type_ids`` (the image blocks of the prefill masks)."""
        lm = super().lm_inputs(input_ids, attention_mask, position_ids, cache, **mm_inputs)
        lm.extras.pop("return_dict", None)
        if mm_inputs.get("token_type_ids") is not None:
            lm.extras["token_type_ids"] = mm_inputs["token_type_ids"]
        return lm

    # ------------------------------------------------------------------ rotary
    def rotary(self, hidden, positions):
        """(cos, sin), each (B|1, q, types, head_dim): one rotary per layer type."""
        pairs = [self.rotary_emb(hidden, positions.rope, t) for t in self.types]
        return torch.stack([c for c, _ in pairs], dim=-2), torch.stack([s for _, s in pairs], dim=-2)

    def _type_of(self, layer) -> str:
        module = layer.args[0] if isinstance(layer, functools.partial) else layer  # a checkpointed raw forward
        return module.self_attn.layer_type

    def _pick(self, layer_type: str, position_embeddings):
        i = self.types.index(layer_type)
        cos, sin = position_embeddings
        return cos[..., i, :], sin[..., i, :]

    def apply_rotary(self, attn: nn.Module):
        base = super().apply_rotary(attn)
        layer_type = attn.layer_type

        def apply(q, k, cos, sin, *args, **kwargs):
            cos, sin = self._pick(layer_type, (cos, sin))
            return base(q, k, cos, sin, *args, **kwargs)
        return apply

    def call_layer(self, layer, hidden, mask, position_ids, cache, use_cache, position_embeddings):
        layer_type = self._type_of(layer)
        if isinstance(mask, dict):
            mask = mask[layer_type]
        return super().call_layer(layer, hidden, mask, position_ids, cache, use_cache,
                                  self._pick(layer_type, position_embeddings))

    # ------------------------------------------------------------------ masks
    def _first_of_each_type(self, layers) -> dict[str, int | None]:
        firsts: dict[str, int | None] = {}
        for i in layers:
            firsts.setdefault(self.layer_types[i], i)
        return firsts

    def attention_masks(self, layers, *, inputs_embeds, attention_mask, cache, position_ids, extras=None):
        """One mask per layer type, as ``Gemma3Model`` builds them (image blocks from ``token_type_ids``)."""
        from transformers.masking_utils import (
            _preprocess_mask_arguments, blockwise_overlay, create_causal_mask, create_sliding_window_causal_mask,
            maybe_pad_block_sequence_ids, sliding_window_overlay,
        )

        token_type_ids = (extras or {}).get("token_type_ids")
        blocks = None
        if token_type_ids is not None:
            blocks = _block_ids(token_type_ids[:, : inputs_embeds.shape[1]])
        kw = dict(config=self.text_config, inputs_embeds=inputs_embeds, attention_mask=attention_mask, cache=cache,
                  position_ids=position_ids)
        masks = {}
        for layer_type, idx in self._first_of_each_type(layers).items():
            idx = idx if cache is not None else None
            if layer_type == "full_attention":
                masks[layer_type] = create_causal_mask(**kw, layer_idx=idx, block_sequence_ids=blocks)
            elif blocks is None:
                masks[layer_type] = create_sliding_window_causal_mask(**kw, layer_idx=idx)
            else:  # AND(window, OR(causal, same image)), as create_masks_for_vision_model
                early_exit, _, _, _, kv_length, _, kv_offset = _preprocess_mask_arguments(**kw, layer_idx=idx)
                padded = blocks if early_exit else maybe_pad_block_sequence_ids(blocks, attention_mask, kv_length,
                                                                                kv_offset)
                masks[layer_type] = create_causal_mask(
                    **kw, or_mask_function=blockwise_overlay(padded),
                    and_mask_function=sliding_window_overlay(self.sliding_window), layer_idx=idx)
        return masks

    def view_masks(self, layers, *, query_positions, key_positions, key_valid, dtype, extras, default):
        """One explicit mask per layer type, by original position (B, 1, q, K): bool for sdpa, additive for eager."""
        if key_positions is None:
            raise ValueError("decoding a routed Gemma 3 model needs the DPVRCache of its own prefill call")
        impl = self.text_config._attn_implementation
        if impl not in ("sdpa", "eager"):
            raise NotImplementedError(f"a routed Gemma 3 model needs explicit masks; use attn_implementation 'sdpa' "
                                      f"or 'eager', not {impl!r}")
        qpos, kpos = query_positions[:, :, None], key_positions[:, None, :]  # (B, q, 1), (B, 1, K)
        allowed = kpos <= qpos
        token_type_ids = (extras or {}).get("token_type_ids")
        if token_type_ids is not None:  # prefill: tokens of one image see each other
            blocks = _block_ids(token_type_ids)
            qb = blocks.gather(1, query_positions.clamp(max=blocks.shape[1] - 1))
            kb = blocks.gather(1, key_positions.clamp(max=blocks.shape[1] - 1))
            allowed = allowed | ((qb[:, :, None] == kb[:, None, :]) & (qb[:, :, None] >= 0))
        allowed = allowed & key_valid.bool()[:, None, :]
        masks = {}
        for layer_type in self._first_of_each_type(layers):
            m = allowed
            if layer_type == "sliding_attention":
                m = m & (qpos - kpos < self.sliding_window)
            # a query with no key (a padding slot) attends to its own position: its output is never read
            m = m | (~m.any(-1, keepdim=True) & (kpos == qpos))
            m = m[:, None]  # (B, 1, q, K)
            masks[layer_type] = m if impl == "sdpa" else torch.where(
                m, torch.zeros((), dtype=dtype, device=m.device), torch.finfo(dtype).min)
        return masks
