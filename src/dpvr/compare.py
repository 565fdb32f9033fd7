"""Route one batch through several variants and compare each with vanilla.

`compare_variants` is what ``dpvr route`` prints: for each variant, how far its logits move from
vanilla, whether the top-1 next token agrees, whether cached greedy decode equals a no-cache
recompute, and how many positions each deep layer processes (the saving in one number).
"""

from __future__ import annotations

import time

import torch

from dpvr.backbones import adapter_for
from dpvr.config import DPVR_VARIANTS, DPVRConfig
from dpvr.model import get_dpvr_model


@torch.no_grad()
def compare_variants(
    base,
    input_ids: torch.Tensor,  # (B, L)
    pixel_values: torch.Tensor | None,
    attention_mask: torch.Tensor | None = None,
    split: int | None = None,
    variants: tuple[str, ...] = ("vanilla", *DPVR_VARIANTS),
    new_tokens: int = 8,
) -> list[dict]:
    num_layers = base.config.get_text_config().num_hidden_layers
    split = split if split is not None else num_layers // 2
    adapter = adapter_for(base)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    is_text = ~adapter.visual_mask(input_ids) & attention_mask.bool()
    full_len, text_len = int(attention_mask.sum(1).max()), int(is_text.sum(1).max())
    gen = dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
               max_new_tokens=new_tokens, do_sample=False, suppress_tokens=adapter.suppress_tokens())
    rows, reference = [], None
    for variant in variants:
        model = get_dpvr_model(base, DPVRConfig(variant=variant, split=None if variant == "vanilla" else split)).eval()
        start = time.perf_counter()
        logits = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values).logits
        seconds = time.perf_counter() - start
        if reference is None:
            reference = logits
        cached = model.generate(**gen, use_cache=True)
        recompute = model.generate(**gen, use_cache=False)
        deep_positions = [text_len if m == "text" else full_len for m in model.plan.modes[split:]]
        rows.append({
            "variant": variant,
            "split": split,
            "modes": "".join({"full": "F", "text": "t", "kv": "k", "fuse": "U"}[m] for m in model.plan.modes),
            "max_abs_logit_diff_vs_vanilla": float((logits - reference)[is_text].abs().max()),
            "top1_agrees_with_vanilla": bool((logits[:, -1].argmax(-1) == reference[:, -1].argmax(-1)).all()),
            "cached_decode_equals_recompute": bool(torch.equal(cached, recompute)),
            "deep_positions_per_layer": sum(deep_positions) / max(len(deep_positions), 1),
            "prefill_seconds": seconds,
            "trainable_parameters": model.trainable_parameter_count()[0],
        })
    return rows
