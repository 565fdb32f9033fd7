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
* ``pairs`` are the query–key pairs the layer's mask allows: causal; in a sliding-window layer
  (Gemma 3) a query sees at most the last ``window`` keys of its layer's view (HF's
  ``kv_idx > q_idx - window``); where a family attends bidirectionally within an image (Gemma 3),
  an image token also sees the later tokens of its own image (in sliding layers too);
* the text dims come from ``config.get_text_config()`` of any family (grouped-query k/v width,
  per-layer sliding windows); the prompt layout (visual tokens per image or frame, marker tokens)
  from :mod:`dpvr.shapes.layout`; the vision side from :mod:`dpvr.efficiency.vision`;
* the vision tower and projector (:mod:`dpvr.efficiency.vision`) and ``lm_head`` are the same for every method. ``lm_head`` is
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
    """The numbers of a config that cost depends on (any family; the text dims from its text config)."""

    name: str
    num_layers: int
    hidden: int
    intermediate: int
    q_width: int
    kv_width: int
    vocab: int
    image_tokens: int  # visual tokens of the default layout's visual inputs, as the language model sees them
    vision_per_image: int = 0  # vision tower + projector FLOPs of those visual inputs
    windows: tuple[int, ...] = ()  # per layer: sliding window (0 = full attention); () = all full
    family: str = "llava"

    @classmethod
    def from_config(cls, config, layout=None) -> "ShapeDims":
        """Dims of ``config``; ``layout`` (a :class:`~dpvr.shapes.layout.PromptLayout`, default: the shape's
        first layout) sets the visual tokens and vision FLOPs per prompt."""
        from dpvr.efficiency.vision import vision_flops
        from dpvr.shapes.layout import prompt_layout

        t = config.get_text_config()
        layout = layout or prompt_layout(config)
        head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
        kv_heads = getattr(t, "num_key_value_heads", None) or t.num_attention_heads
        types = getattr(t, "layer_types", None) or []
        windows = tuple(int(t.sliding_window) if kind == "sliding_attention" and t.sliding_window else 0
                        for kind in types)
        return cls(
            name=getattr(config, "name_or_path", "") or "custom",
            num_layers=t.num_hidden_layers,
            hidden=t.hidden_size,
            intermediate=t.intermediate_size,
            q_width=t.num_attention_heads * head_dim,
            kv_width=kv_heads * head_dim,
            vocab=t.vocab_size,
            image_tokens=layout.visual_tokens,
            vision_per_image=vision_flops(config, layout),
            windows=windows if any(windows) else (),
            family=config.model_type,
        )

    def window(self, layer: int) -> int:
        """Sliding window of decoder layer ``layer`` (0: full attention)."""
        return self.windows[layer] if self.windows else 0


# ---------------------------------------------------------------------------------------- pieces
def attention_pairs(work: LayerWork, window: int = 0, groups: np.ndarray | None = None) -> int:
    """Query–key pairs one layer computes: causal within the layer's keys, at most the last ``window``
    keys per query when ``window`` > 0, plus, where ``groups`` marks bidirectional blocks (id >= 0),
    the keys of a query's own block that come after it."""
    keys_up_to = np.cumsum(work.keys, dtype=np.int64)
    seen = keys_up_to[work.queries]
    if window:
        seen = np.minimum(seen, window)
    total = int(seen.sum())
    if groups is not None:
        for g in np.unique(groups[groups >= 0]):
            block = groups == g
            block_keys = np.flatnonzero(block & work.keys)
            if not len(block_keys):
                continue
            queries = np.flatnonzero(block & work.queries)
            total += int((len(block_keys) - np.searchsorted(block_keys, queries, side="right")).sum())
    return total


def layer_flops(work: LayerWork, dims: ShapeDims, window: int = 0, groups: np.ndarray | None = None) -> int:
    """FLOPs of one decoder layer doing ``work`` (see the module docstring for the formula)."""
    d, wq, wkv = dims.hidden, dims.q_width, dims.kv_width
    n_q, n_kv = int(work.queries.sum()), int(work.kv_proj.sum())
    return (2 * n_q * (2 * d * wq + 3 * d * dims.intermediate) + 2 * n_kv * (2 * d * wkv)
            + 4 * wq * attention_pairs(work, window, groups))


def decode_layer_flops(cache_len: int, dims: ShapeDims, window: int = 0) -> int:
    """FLOPs of one decoder layer for one new token that attends to ``cache_len`` cached positions and
    itself (at most ``window`` keys in a sliding-window layer)."""
    d, wq, wkv = dims.hidden, dims.q_width, dims.kv_width
    keys = cache_len + 1 if not window else min(cache_len + 1, window)
    return 2 * (2 * d * wq + 3 * d * dims.intermediate) + 2 * (2 * d * wkv) + 4 * wq * keys


def vision_flops_per_image(dims: ShapeDims) -> int:
    """Vision tower and projector FLOPs of the shape's default visual input(s) (:mod:`dpvr.efficiency.vision`)."""
    return dims.vision_per_image


def lm_head_flops(positions: int, dims: ShapeDims) -> int:
    return 2 * positions * dims.hidden * dims.vocab


# ---------------------------------------------------------------------------------------- totals
def prefill_flops(
    dims: ShapeDims, method: Method, is_image: np.ndarray, batch: int = 1, lm_head_positions: str = "last",
    groups: np.ndarray | None = None, vision: int | None = None, split: int | None = None,
) -> dict[str, int]:
    """Prefill FLOPs of ``method`` on ``batch`` prompts laid out as ``is_image``.

    ``groups``: bidirectional visual blocks (:meth:`~dpvr.shapes.layout.PromptLayout.groups`);
    ``vision``: the vision FLOPs of the prompt's visual inputs (default: whole images of the shape's
    default input, counted from ``is_image``). The side branch's layers are copies of layers
    ``s..s+D-1`` and keep their windows. Returns ``decoder`` (the LM's own layers), ``side_branch``,
    ``lm`` (their sum), ``vision`` (tower + projector), ``lm_head`` and ``whole``.
    """
    if lm_head_positions not in ("last", "all"):
        raise ValueError(f"lm_head_positions must be 'last' or 'all', got {lm_head_positions!r}")
    is_image = np.asarray(is_image, dtype=bool)
    n_image = int(is_image.sum())
    if vision is None:
        if n_image % dims.image_tokens:
            raise ValueError(f"{n_image} image positions is not a whole number of images of {dims.image_tokens} tokens")
        vision = (n_image // dims.image_tokens) * vision_flops_per_image(dims)
    plan = schedule(method, is_image, dims.num_layers)
    decoder = sum(layer_flops(w, dims, dims.window(i), groups) for i, w in enumerate(plan.layers))
    first_side = _side_start(method, dims.num_layers)
    side = sum(layer_flops(w, dims, dims.window(first_side + j), groups) for j, w in enumerate(plan.side))
    head = lm_head_flops(len(is_image) if lm_head_positions == "all" else 1, dims)
    out = {"decoder": decoder, "side_branch": side, "lm": decoder + side, "vision": vision, "lm_head": head}
    out["whole"] = out["lm"] + vision + head
    return {k: v * batch for k, v in out.items()}


def _side_start(method: Method, num_layers: int) -> int:
    """The first layer the side branch copies (its windows follow those layers)."""
    if method.dpvr is None or method.is_peer:
        return 0
    return method.dpvr.resolve(num_layers).split or 0


def cache_lengths(dims: ShapeDims, method: Method, is_image: np.ndarray) -> list[int]:
    """Positions each decoder layer holds in its KV cache after prefill (the side branch keeps none);
    a sliding-window layer keeps its last ``window - 1`` (HF's ``DynamicSlidingWindowLayer``)."""
    lengths = [int(w.keys.sum()) for w in schedule(method, np.asarray(is_image, dtype=bool), dims.num_layers).layers]
    return [min(n, dims.window(i) - 1) if dims.window(i) else n for i, n in enumerate(lengths)]


def decode_flops(dims: ShapeDims, method: Method, is_image: np.ndarray, new_tokens: int = 1, batch: int = 1) -> float:
    """Mean FLOPs per generated token over ``new_tokens`` cached decode steps (decoder layers + lm_head).

    Step ``j`` (0-based) attends to the prompt's cached positions of each layer, ``j`` earlier new
    tokens and itself. The side branch and the vision tower do not run at decode.
    """
    if new_tokens < 1:
        raise ValueError(f"new_tokens must be >= 1, got {new_tokens}")
    lengths = cache_lengths(dims, method, is_image)
    if not dims.windows:
        mean_extra = (new_tokens - 1) / 2
        per_token = sum(decode_layer_flops(n, dims) for n in lengths) + 4 * dims.q_width * mean_extra * len(lengths)
    else:  # step by step: a sliding layer stops growing at its window
        per_token = sum(decode_layer_flops(n + j, dims, dims.window(i)) for i, n in enumerate(lengths)
                        for j in range(new_tokens)) / new_tokens
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
    layout=None,
) -> list[dict]:
    """One row per (text length, method): absolute figures and ratios to vanilla of the same layout.

    ``methods`` must start with vanilla (as :func:`~dpvr.efficiency.methods.make_methods` returns them).
    With ``layout`` (a :class:`~dpvr.shapes.layout.PromptLayout`; ``dims`` built from the same one) the
    prompt is that layout plus ``t`` text tokens, and ``system_tokens``/``num_images`` are ignored;
    without, it is ``system_tokens``, ``num_images`` blocks of ``dims.image_tokens`` and the text.
    """
    if not methods or methods[0].name != "vanilla":
        raise ValueError("methods must start with 'vanilla' (the reference every ratio is taken against)")
    rows = []
    for t in text_tokens:
        if layout is not None:
            mask, groups, vision = layout.mask(t), layout.groups(t), dims.vision_per_image
            system_tokens = layout.system_tokens
        else:
            mask, groups, vision = prompt_mask(system_tokens, dims.image_tokens, t, num_images), None, None
        ref = None
        for m in methods:
            pre = prefill_flops(dims, m, mask, batch, lm_head_positions, groups, vision)
            row = {
                "method": m.name,
                "label": m.label,
                "text_tokens": t,
                "system_tokens": system_tokens,
                "image_tokens": int(mask.sum()),
                "visual_share": float(mask.mean()),
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
    head = (f"{'text':>5} {'method':<28} {'LM TFLOP':>9} {'LM save':>8} {'whole TFLOP':>11} {'whole save':>10} "
            f"{'decode GF/tok':>13} {'dec ratio':>9} {'KV MiB':>8} {'KV ratio':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['text_tokens']:>5} {r['label']:<28} {r['prefill_lm'] / 1e12:>9.3f} {r['saving_lm']:>8.1%} "
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
        "settings": {k: v for k, v in kwargs.items() if k != "layout"},
        "layout": asdict(kwargs["layout"]) if kwargs.get("layout") is not None else None,
        "convention": "2 FLOPs per multiply-add; projections+MLP+causal attention pairs; LM = decoder + side branch; "
                      "whole = LM + vision tower + projector + lm_head",
        "rows": compare(dims, methods, **kwargs),
    }
