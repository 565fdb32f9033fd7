"""Analytic FLOPs, decode cost and KV-cache size of every method (SPEC §9), from a config alone.

Run it as ``dpvr bench flops --config llava-1.5-7b --split 18`` or from Python::

    from dpvr.efficiency.flops import ShapeDims, compare, format_table
    from dpvr.efficiency.methods import make_methods
    from dpvr.shapes import load_shape_config

    dims = ShapeDims.from_config(load_shape_config("llava-1.5-7b"))
    methods = make_methods(["lf", "pc", "kv"], dims.num_layers, split=18)
    print(format_table(compare(dims, methods, text_tokens=[64, 128, 256, 512])))

Counting convention (one multiply-add = 2 FLOPs; norms, RoPE, softmax, residual adds and other
element-wise work are not counted):

* a decoder layer computing ``n_q`` query positions, ``n_kv`` key/value projections and ``pairs``
  causal query–key pairs costs ``2·n_q·(2·d·w_q + 3·d·d_ff) + 2·n_kv·(2·d·w_kv) + 4·w_q·pairs``,
  where ``w_q = heads·head_dim`` and ``w_kv = kv_heads·head_dim`` (grouped-query attention uses its
  real, narrower k/v width). With ``w_q = w_kv = d`` and ``n_q = n_kv`` this is SPEC §9's
  ``2·tokens·(4d² + 3·d·d_ff) + 4·d·pairs``;
* which positions a layer computes is the method's :class:`~dpvr.efficiency.methods.Schedule`
  (``text`` layers: text positions only; ``kv`` layers: text queries, k/v of all positions;
  ``fuse``/``full``: everything; side branch: D layers over the prefix up to the last image token);
* the vision tower (every CLIP layer runs, although LLaVA reads layer -2; bidirectional attention
  over patches + CLS), the projector and ``lm_head`` are the same for every method. ``lm_head`` is
  counted at the last prompt position only (what ``generate`` computes); pass
  ``lm_head_positions="all"`` for a training-style forward.

Two totals are reported: **LM** (decoder layers + side branch: what routing changes) and **whole**
(LM + vision tower + projector + ``lm_head``). The SPEC's reference (~29 % at 128 text tokens, ~20 %
at 512, LLaVA-1.5-7B, s=18, K=1, D=1) is the LM saving.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from transformers import LlavaConfig

from dpvr.efficiency.methods import LayerWork, Method, prompt_mask, schedule

DEFAULT_SYSTEM_TOKENS = 35  # LLaVA-1.5's system prompt + "USER: " before the image
DEFAULT_TEXT_TOKENS = (64, 128, 256, 512)


@dataclass(frozen=True)
class ShapeDims:
    """The numbers of a LLaVA config that cost depends on."""

    name: str
    num_layers: int
    hidden: int
    intermediate: int
    q_width: int
    kv_width: int
    vocab: int
    image_tokens: int  # per image, as the language model sees them
    v_hidden: int
    v_intermediate: int
    v_layers: int
    v_patches: int
    v_tokens: int  # patches + CLS
    v_patch_flops_per_patch: int  # channels * patch * patch
    projector_in: int

    @classmethod
    def from_config(cls, config: LlavaConfig) -> "ShapeDims":
        t, v = config.text_config, config.vision_config
        head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
        kv_heads = getattr(t, "num_key_value_heads", None) or t.num_attention_heads
        patches = (v.image_size // v.patch_size) ** 2
        strategy = config.vision_feature_select_strategy
        layers = config.vision_feature_layer
        n_feature_layers = len(layers) if isinstance(layers, (list, tuple)) else 1
        return cls(
            name=getattr(config, "name_or_path", "") or "custom",
            num_layers=t.num_hidden_layers,
            hidden=t.hidden_size,
            intermediate=t.intermediate_size,
            q_width=t.num_attention_heads * head_dim,
            kv_width=kv_heads * head_dim,
            vocab=t.vocab_size,
            image_tokens=patches if strategy == "default" else patches + 1,
            v_hidden=v.hidden_size,
            v_intermediate=v.intermediate_size,
            v_layers=v.num_hidden_layers,
            v_patches=patches,
            v_tokens=patches + 1,
            v_patch_flops_per_patch=getattr(v, "num_channels", 3) * v.patch_size**2,
            projector_in=v.hidden_size * n_feature_layers,
        )


# ---------------------------------------------------------------------------------------- pieces
def layer_flops(work: LayerWork, dims: ShapeDims) -> int:
    """FLOPs of one decoder layer doing ``work`` (see the module docstring for the formula)."""
    d, wq, wkv = dims.hidden, dims.q_width, dims.kv_width
    n_q, n_kv = int(work.queries.sum()), int(work.kv_proj.sum())
    return 2 * n_q * (2 * d * wq + 3 * d * dims.intermediate) + 2 * n_kv * (2 * d * wkv) + 4 * wq * work.causal_pairs()


def decode_layer_flops(cache_len: int, dims: ShapeDims) -> int:
    """FLOPs of one decoder layer for one new token that attends to ``cache_len`` cached positions and itself."""
    d, wq, wkv = dims.hidden, dims.q_width, dims.kv_width
    return 2 * (2 * d * wq + 3 * d * dims.intermediate) + 2 * (2 * d * wkv) + 4 * wq * (cache_len + 1)


def vision_flops_per_image(dims: ShapeDims) -> int:
    """CLIP tower (patch embedding + every encoder layer) and the 2-layer projector, for one image."""
    n, dv = dims.v_tokens, dims.v_hidden
    embed = 2 * dims.v_patches * dims.v_patch_flops_per_patch * dv
    layer = 2 * n * (4 * dv * dv + 2 * dv * dims.v_intermediate) + 4 * dv * n * n
    projector = 2 * dims.image_tokens * (dims.projector_in * dims.hidden + dims.hidden * dims.hidden)
    return embed + dims.v_layers * layer + projector


def lm_head_flops(positions: int, dims: ShapeDims) -> int:
    return 2 * positions * dims.hidden * dims.vocab


# ---------------------------------------------------------------------------------------- totals
def prefill_flops(
    dims: ShapeDims, method: Method, is_image: np.ndarray, batch: int = 1, lm_head_positions: str = "last"
) -> dict[str, int]:
    """Prefill FLOPs of ``method`` on ``batch`` prompts laid out as ``is_image``.

    Returns ``decoder`` (the LM's own layers), ``side_branch``, ``lm`` (their sum), ``vision`` (tower +
    projector), ``lm_head`` and ``whole``.
    """
    if lm_head_positions not in ("last", "all"):
        raise ValueError(f"lm_head_positions must be 'last' or 'all', got {lm_head_positions!r}")
    is_image = np.asarray(is_image, dtype=bool)
    n_image = int(is_image.sum())
    if n_image % dims.image_tokens:
        raise ValueError(f"{n_image} image positions is not a whole number of images of {dims.image_tokens} tokens")
    plan = schedule(method, is_image, dims.num_layers)
    decoder = sum(layer_flops(w, dims) for w in plan.layers)
    side = sum(layer_flops(w, dims) for w in plan.side)
    vision = (n_image // dims.image_tokens) * vision_flops_per_image(dims)
    head = lm_head_flops(len(is_image) if lm_head_positions == "all" else 1, dims)
    out = {"decoder": decoder, "side_branch": side, "lm": decoder + side, "vision": vision, "lm_head": head}
    out["whole"] = out["lm"] + vision + head
    return {k: v * batch for k, v in out.items()}


def cache_lengths(dims: ShapeDims, method: Method, is_image: np.ndarray) -> list[int]:
    """Positions each decoder layer holds in its KV cache after prefill (the side branch keeps none)."""
    return [int(w.keys.sum()) for w in schedule(method, np.asarray(is_image, dtype=bool), dims.num_layers).layers]


def decode_flops(dims: ShapeDims, method: Method, is_image: np.ndarray, new_tokens: int = 1, batch: int = 1) -> float:
    """Mean FLOPs per generated token over ``new_tokens`` cached decode steps (decoder layers + lm_head).

    Step ``j`` (0-based) attends to the prompt's cached positions of each layer, ``j`` earlier new
    tokens and itself. The side branch and the vision tower do not run at decode.
    """
    if new_tokens < 1:
        raise ValueError(f"new_tokens must be >= 1, got {new_tokens}")
    lengths = cache_lengths(dims, method, is_image)
    mean_extra = (new_tokens - 1) / 2
    per_token = sum(decode_layer_flops(n, dims) for n in lengths) + 4 * dims.q_width * mean_extra * len(lengths)
    return batch * (per_token + lm_head_flops(1, dims))


def kv_cache_bytes(dims: ShapeDims, method: Method, is_image: np.ndarray, batch: int = 1, dtype_bytes: int = 2) -> int:
    """KV-cache bytes after prefill: per layer, cached positions × (k + v) × kv width × dtype size."""
    return batch * sum(cache_lengths(dims, method, is_image)) * 2 * dims.kv_width * dtype_bytes


# ---------------------------------------------------------------------------------------- comparison
def compare(
    dims: ShapeDims,
    methods: list[Method],
    text_tokens: list[int] | tuple[int, ...] = DEFAULT_TEXT_TOKENS,
    system_tokens: int = DEFAULT_SYSTEM_TOKENS,
    num_images: int = 1,
    batch: int = 1,
    new_tokens: int = 1,
    dtype_bytes: int = 2,
    lm_head_positions: str = "last",
) -> list[dict]:
    """One row per (text length, method): absolute figures and ratios to vanilla of the same layout.

    ``methods`` must start with vanilla (as :func:`~dpvr.efficiency.methods.make_methods` returns them).
    """
    if not methods or methods[0].name != "vanilla":
        raise ValueError("methods must start with 'vanilla' (the reference every ratio is taken against)")
    rows = []
    for t in text_tokens:
        mask = prompt_mask(system_tokens, dims.image_tokens, t, num_images)
        ref = None
        for m in methods:
            pre = prefill_flops(dims, m, mask, batch, lm_head_positions)
            row = {
                "method": m.name,
                "label": m.label,
                "text_tokens": t,
                "system_tokens": system_tokens,
                "image_tokens": int(mask.sum()),
                "prompt_tokens": len(mask),
                "batch": batch,
                "prefill_lm": pre["lm"],
                "prefill_side_branch": pre["side_branch"],
                "prefill_vision": pre["vision"],
                "prefill_lm_head": pre["lm_head"],
                "prefill_whole": pre["whole"],
                "decode_per_token": decode_flops(dims, m, mask, new_tokens, batch),
                "kv_cache_bytes": kv_cache_bytes(dims, m, mask, batch, dtype_bytes),
            }
            ref = ref or row
            for key in ("prefill_lm", "prefill_whole", "decode_per_token", "kv_cache_bytes"):
                row[f"{key}_ratio"] = row[key] / ref[key]
            row["saving_lm"] = 1 - row["prefill_lm_ratio"]
            row["saving_whole"] = 1 - row["prefill_whole_ratio"]
            rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """A plain-text table of :func:`compare` rows."""
    head = (f"{'text':>5} {'method':<22} {'LM TFLOP':>9} {'LM save':>8} {'whole TFLOP':>11} {'whole save':>10} "
            f"{'decode GF/tok':>13} {'dec ratio':>9} {'KV MiB':>8} {'KV ratio':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['text_tokens']:>5} {r['label']:<22} {r['prefill_lm'] / 1e12:>9.3f} {r['saving_lm']:>8.1%} "
            f"{r['prefill_whole'] / 1e12:>11.3f} {r['saving_whole']:>10.1%} {r['decode_per_token'] / 1e9:>13.2f} "
            f"{r['decode_per_token_ratio']:>9.3f} {r['kv_cache_bytes'] / 2**20:>8.1f} {r['kv_cache_bytes_ratio']:>8.3f}"
        )
    return "\n".join(lines)


def analytic_report(dims: ShapeDims, methods: list[Method], **kwargs) -> dict:
    """Everything :func:`compare` computes plus the settings, ready for JSON."""
    return {
        "shape": asdict(dims),
        "methods": [{"name": m.name, "label": m.label, "dpvr": m.dpvr.to_dict() if m.dpvr else None,
                     "options": m.options} for m in methods],
        "settings": kwargs,
        "convention": "2 FLOPs per multiply-add; projections+MLP+causal attention pairs; LM = decoder + side branch; "
                      "whole = LM + vision tower + projector + lm_head",
        "rows": compare(dims, methods, **kwargs),
    }
