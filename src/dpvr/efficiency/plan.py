"""Analytic cost of any `DPVRConfig`, from its resolved plan (every variant, FastV, VTW, compositions).

`plan_schedule` turns a plan into the positions each layer computes; `config_flops` prices it with
the counting convention of :mod:`dpvr.efficiency.flops`. It agrees with
:func:`dpvr.efficiency.methods.schedule` for every method that module knows (tested), and also
covers FastV pruning composed with DPVR routing.
"""

from __future__ import annotations

import numpy as np

from dpvr.config import DPVRConfig, ResolvedPlan
from dpvr.efficiency.flops import ShapeDims, layer_flops, lm_head_flops, vision_flops_per_image
from dpvr.efficiency.methods import LayerWork, Schedule, _kept_image_positions, prompt_mask


def plan_schedule(plan: ResolvedPlan, is_image: np.ndarray) -> Schedule:
    """Positions each layer computes under ``plan`` on a prompt whose image positions are ``is_image``.

    Layers before FastV's pruning layer see every position; from it on, the kept view (text plus
    the kept image tokens; which ones are kept does not change the count). ``text`` layers: text
    only; ``kv``: text queries over the view's keys; side branch: D layers over the view's prefix
    up to the last (kept) image token.
    """
    is_image = np.asarray(is_image, dtype=bool)
    every, text = np.ones_like(is_image), ~is_image
    kept = every if plan.prune_layer is None else text | _kept_image_positions(is_image, plan.keep_ratio)
    layers = []
    for i, mode in enumerate(plan.modes):
        view = every if plan.prune_layer is None or i < plan.prune_layer else kept
        if mode in ("full", "fuse"):
            layers.append(LayerWork(view, view, view))
        elif mode == "text":
            layers.append(LayerWork(text, text, text))
        else:  # kv: text queries, keys/values over the view
            layers.append(LayerWork(text, view, view))
    side = []
    view = every if plan.prune_layer is None or plan.split < plan.prune_layer else kept
    image = is_image & view
    if plan.side_depth and image.any():
        prefix = view & (np.arange(len(is_image)) <= np.flatnonzero(image)[-1])
        side = [LayerWork(prefix, prefix, prefix)] * plan.side_depth
    return Schedule(layers, side)


def config_flops(dims: ShapeDims, config: DPVRConfig, is_image: np.ndarray) -> dict:
    """Prefill FLOPs of ``config`` on one prompt: LM (decoder + side branch), whole model, cached positions."""
    sched = plan_schedule(config.resolve(dims.num_layers), is_image)
    lm = sum(layer_flops(w, dims) for w in sched.layers) + sum(layer_flops(w, dims) for w in sched.side)
    whole = lm + lm_head_flops(1, dims)  # lm_head at the last prompt position, as generate computes
    if is_image.any():
        whole += vision_flops_per_image(dims)
    return {"lm": lm, "whole": whole, "kv_cache_positions": sum(int(w.keys.sum()) for w in sched.layers)}


def compare_configs(dims: ShapeDims, configs: dict[str, DPVRConfig], system_tokens: int, text_tokens: int,
                    num_images: int = 1) -> list[dict]:
    """One row per labelled config: FLOPs and savings against the first (vanilla) config."""
    is_image = prompt_mask(system_tokens, dims.image_tokens, text_tokens, num_images)
    rows, ref = [], None
    for label, cfg in configs.items():
        f = config_flops(dims, cfg, is_image)
        ref = ref or f
        rows.append({"method": label, "config": cfg.to_dict(), "system_tokens": system_tokens,
                     "image_tokens": int(is_image.sum()), "text_tokens": text_tokens, "prefill_lm_flops": f["lm"],
                     "prefill_whole_flops": f["whole"], "lm_saving": 1 - f["lm"] / ref["lm"],
                     "whole_saving": 1 - f["whole"] / ref["whole"],
                     "kv_cache_ratio": f["kv_cache_positions"] / ref["kv_cache_positions"]})
    return rows
