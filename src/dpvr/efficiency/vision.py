"""Analytic FLOPs of the vision side (tower + projector) of every family, for one prompt layout.

The vision side costs the same under every routing method, so it only dilutes the whole-model
saving; the LM figures of :mod:`dpvr.efficiency.flops` do not depend on it. Counting convention as
there: every matmul and convolution at 2 FLOPs per multiply-add (bidirectional attention within
each image, tile or frame group: ``4·width·n²``), nothing element-wise. Per family:

=================  ================================================================================
llava, NeXT, OV    CLIP/SigLIP (every layer runs) over each crop (NeXT/OV: base view + tiles; OV
                   video: each frame) + the 2-layer projector over every crop's features
gemma3             SigLIP over 4,096 patches + the pooled 256-token projection
internvl           InternViT over each 448-px tile (+CLS) + pixel shuffle + 2-layer projector
idefics3/smolvlm   SigLIP over each 384-px tile + the pixel-shuffle connector
qwen2_vl           patch conv + 32 blocks (plain MLP, full attention per frame group) + the 2×2 merger
qwen2_5_vl         patch conv + 32 blocks (gated MLP; window attention of 8×8 patches except the full-
                   attention blocks, which attend within each frame group) + the 2×2 merger
qwen3_vl           patch conv + 27 blocks (full attention per frame group) + merger + deepstack mergers
mistral3           Pixtral (gated MLP, attention over the image) + 2×2 patch merger + projector
=================  ================================================================================

Each rule equals ``torch.utils.flop_counter.FlopCounterMode`` on the vision modules of a scaled-down
model of its family running the inputs :mod:`dpvr.efficiency.inputs` builds (``tests/test_family_vision.py``;
images and videos); :data:`EXACT` lists those families. The vision side changes only the "whole"
saving, never the LM saving.
"""

from __future__ import annotations

from dpvr.shapes.layout import PromptLayout, shape_meta, visual_runs

# Families whose analytic vision count is checked equal to torch's FLOP counter on a scaled-down model.
EXACT: tuple[str, ...] = ("llava_next", "llava_onevision", "qwen2_5_vl", "qwen3_vl", "gemma3", "internvl", "smolvlm",
                          "mistral3")


def _pair(x) -> int:
    return x[0] if isinstance(x, (list, tuple)) else x


def encoder_flops(tokens: int, layers: int, width: int, ff: int, mlp_matrices: int = 2, qkv_width: int | None = None,
                  pairs: int | None = None) -> int:
    """``layers`` pre-norm transformer blocks over one sequence of ``tokens``: q/k/v/o projections, an MLP
    of ``mlp_matrices`` matrices (2 plain, 3 gated) and bidirectional attention (``pairs``, default
    ``tokens²``)."""
    qkv = qkv_width or width
    pairs = tokens * tokens if pairs is None else pairs
    per_layer = 2 * tokens * (3 * width * qkv + qkv * width) + 2 * tokens * mlp_matrices * width * ff + 4 * qkv * pairs
    return layers * per_layer


def _vit_heads(vc) -> int:
    return getattr(vc, "num_attention_heads", None) or vc.num_heads


def _projector(tokens: int, d_in: int, hidden: int, layers: int = 2) -> int:
    return 2 * tokens * (d_in * hidden + (hidden * hidden if layers == 2 else 0))


def _llava_like(config, layout: PromptLayout) -> int:
    vc, d = config.vision_config, config.get_text_config().hidden_size
    side = vc.image_size // vc.patch_size
    cls = 1 if vc.model_type == "clip_vision_model" else 0
    per_crop_tokens = side * side + cls
    selected = side * side + (cls if config.vision_feature_select_strategy == "full" else 0)
    layers = config.vision_feature_layer
    n_feat = len(layers) if isinstance(layers, (list, tuple)) else 1
    embed = 2 * side * side * vc.num_channels * vc.patch_size**2 * vc.hidden_size
    crop = embed + encoder_flops(per_crop_tokens, vc.num_hidden_layers, vc.hidden_size, vc.intermediate_size)
    crop += _projector(selected, vc.hidden_size * n_feat, d)
    return sum(layout.units) * crop


def _gemma3(config, layout: PromptLayout) -> int:
    vc, d = config.vision_config, config.get_text_config().hidden_size
    n = (vc.image_size // vc.patch_size) ** 2
    embed = 2 * n * vc.num_channels * vc.patch_size**2 * vc.hidden_size
    tower = embed + encoder_flops(n, vc.num_hidden_layers, vc.hidden_size, vc.intermediate_size)
    return len(layout.units) * (tower + 2 * config.mm_tokens_per_image * vc.hidden_size * d)


def _internvl(config, layout: PromptLayout) -> int:
    vc, d = config.vision_config, config.get_text_config().hidden_size
    side = _pair(vc.image_size) // _pair(vc.patch_size)
    n = side * side
    embed = 2 * n * vc.num_channels * _pair(vc.patch_size) ** 2 * vc.hidden_size
    layer = config.vision_feature_layer
    used = vc.num_hidden_layers if layer == -1 else (layer % (vc.num_hidden_layers + 1))
    tower = embed + encoder_flops(n + 1, used, vc.hidden_size, vc.intermediate_size)
    shuffled = int(vc.hidden_size / config.downsample_ratio**2)
    per_tile = int(n * config.downsample_ratio**2)
    return sum(layout.units) * (tower + _projector(per_tile, shuffled, d))


def _idefics3(config, layout: PromptLayout) -> int:
    vc, d = config.vision_config, config.get_text_config().hidden_size
    n = (vc.image_size // vc.patch_size) ** 2
    embed = 2 * n * vc.num_channels * vc.patch_size**2 * vc.hidden_size
    tower = embed + encoder_flops(n, vc.num_hidden_layers, vc.hidden_size, vc.intermediate_size)
    per_tile = n // config.scale_factor**2
    return sum(layout.units) * (tower + 2 * per_tile * vc.hidden_size * config.scale_factor**2 * d)


def _qwen_grids(config, layout: PromptLayout) -> list[tuple[int, int, int]]:
    """(t, h, w) patch grids of the layout's visual inputs, by the adapter's rule (the one the layout counted with)."""
    from dpvr.backbones import adapter_class

    rule, proc = adapter_class(config.model_type), shape_meta(config).get("processor") or {}
    return [rule.visual_grid(config, v, proc) for v in layout.visuals]


def qwen_window_pairs(grid_h: int, grid_w: int, window_units: int, merge: int) -> int:
    """Attention pairs of one frame group under Qwen2.5-VL window attention: windows of
    ``window_units``² merged units (``merge``² patches each), partial at the right/bottom edges."""
    uh, uw = grid_h // merge, grid_w // merge
    rows = [min(window_units, uh - i) for i in range(0, uh, window_units)]
    cols = [min(window_units, uw - j) for j in range(0, uw, window_units)]
    return sum((a * b * merge * merge) ** 2 for a in rows for b in cols)


def _qwen(config, layout: PromptLayout) -> int:
    vc = config.vision_config
    qwen2 = config.model_type == "qwen2_vl"  # tower width embed_dim, plain MLP, full attention, out = hidden_size
    dv = vc.embed_dim if qwen2 else vc.hidden_size
    out = vc.hidden_size if qwen2 else vc.out_hidden_size
    merge = vc.spatial_merge_size
    channels = getattr(vc, "in_channels", None) or getattr(vc, "in_chans", 3)
    qwen3 = config.model_type == "qwen3_vl"
    total = 0
    for t, gh, gw in _qwen_grids(config, layout):
        n, frame = t * gh * gw, gh * gw
        total += 2 * n * channels * vc.temporal_patch_size * vc.patch_size**2 * dv  # patch conv
        full_pairs = t * frame * frame
        if qwen2:
            total += encoder_flops(n, vc.depth, dv, int(dv * vc.mlp_ratio), 2, pairs=full_pairs)
            mergers = 1
        elif qwen3:
            total += encoder_flops(n, vc.depth, dv, vc.intermediate_size, 2, pairs=full_pairs)
            mergers = 1 + len(vc.deepstack_visual_indexes)
        else:
            window_units = vc.window_size // merge // vc.patch_size
            window_pairs = t * qwen_window_pairs(gh, gw, window_units, merge)
            full = len(vc.fullatt_block_indexes)
            total += encoder_flops(n, full, dv, vc.intermediate_size, 3, pairs=full_pairs)
            total += encoder_flops(n, vc.depth - full, dv, vc.intermediate_size, 3, pairs=window_pairs)
            mergers = 1
        units = n // merge**2
        total += mergers * 2 * units * (dv * merge**2 * dv * merge**2 + dv * merge**2 * out)
    return total


def _mistral3(config, layout: PromptLayout) -> int:
    vc, d = config.vision_config, config.get_text_config().hidden_size
    merge = config.spatial_merge_size
    qkv = vc.num_attention_heads * (getattr(vc, "head_dim", None) or vc.hidden_size // vc.num_attention_heads)
    total = 0
    for v in layout.visuals:  # the tower sees (rows·merge)×(cols·merge) patches of each image
        runs, _ = visual_runs(config, v, shape_meta(config).get("processor"))
        tokens = sum(n for kind, n in runs if kind == "image")
        n = tokens * merge * merge
        total += 2 * n * vc.num_channels * vc.patch_size**2 * vc.hidden_size
        total += encoder_flops(n, vc.num_hidden_layers, vc.hidden_size, vc.intermediate_size, 3, qkv_width=qkv)
        total += 2 * tokens * vc.hidden_size * merge * merge * vc.hidden_size  # patch merger
        total += _projector(tokens, vc.hidden_size, d)
    return total


RULES = {
    "llava": _llava_like,
    "llava_next": _llava_like,
    "llava_onevision": _llava_like,
    "gemma3": _gemma3,
    "internvl": _internvl,
    "idefics3": _idefics3,
    "smolvlm": _idefics3,
    "qwen2_vl": _qwen,
    "qwen2_5_vl": _qwen,
    "qwen3_vl": _qwen,
    "mistral3": _mistral3,
}


def vision_flops(config, layout: PromptLayout) -> int:
    """FLOPs of the vision tower and projector for every visual input of ``layout``."""
    rule = RULES.get(config.model_type)
    if rule is None:
        raise ValueError(f"no vision FLOPs rule for model type {config.model_type!r}: "
                         f"supported families are {', '.join(sorted(RULES))}")
    return int(rule(config, layout)) if layout.visuals else 0


def is_exact(config) -> bool:
    return config.model_type in EXACT

