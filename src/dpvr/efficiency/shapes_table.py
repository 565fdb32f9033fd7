"""LF's analytic saving on every bundled shape and layout, beside the visual share of the prompt.

Run it as ``dpvr bench flops --shape all`` or from Python::

    from dpvr.efficiency.shapes_table import shape_rows, format_shape_table
    print(format_shape_table(shape_rows(text_tokens=[128])))

One row per (published shape, layout, text length): visual tokens, marker tokens inside the visual
inputs, visual share of the prompt, and the LM and whole-model prefill savings of LF and the other
listed methods at the shape's usual split (:func:`dpvr.shapes.default_split`).
"""

from __future__ import annotations

from dpvr.efficiency.flops import ShapeDims, compare
from dpvr.efficiency.methods import make_methods
from dpvr.shapes import PUBLISHED, default_split, load_shape_config
from dpvr.shapes.layout import prompt_layout, shape_meta

DEFAULT_TABLE_METHODS = ("lf", "lf+fastv-50")


def shape_rows(names: list[str] | tuple[str, ...] = PUBLISHED, text_tokens: list[int] | tuple[int, ...] = (128,),
               methods: list[str] | tuple[str, ...] = DEFAULT_TABLE_METHODS, fastv_k: int = 2) -> list[dict]:
    """Rows of the per-shape table (see the module docstring); every layout of every named shape."""
    rows = []
    for name in names:
        config = load_shape_config(name)
        split = default_split(config)
        for which in shape_meta(config)["layouts"]:
            layout = prompt_layout(config, which)
            dims = ShapeDims.from_config(config, layout)
            listed = make_methods(list(methods), dims.num_layers, split, fastv_k=fastv_k)
            requested = [n for n in dict.fromkeys(methods) if n != "vanilla"]
            for t in text_tokens:
                base, *others = compare(dims, listed, [t], layout=layout)
                row = {"shape": name, "family": config.model_type, "layout": which,
                       "inputs": [f"{v.kind} {v.width}x{v.height}" + (f"x{v.frames}f" if v.kind == "video" else "")
                                  for v in layout.visuals],
                       "layers": dims.num_layers, "split": split, "system_tokens": layout.system_tokens,
                       "visual_tokens": layout.visual_tokens, "marker_tokens": layout.marker_tokens,
                       "text_tokens": t, "prompt_tokens": base["prompt_tokens"],
                       "visual_share": base["visual_share"], "vanilla_prefill_lm": base["prefill_lm"],
                       "vision_flops": base["prefill_vision"], "savings": {}}
                for key, r in zip(requested, others):
                    row["savings"][key] = {"label": r["label"], "lm": r["saving_lm"], "whole": r["saving_whole"],
                                           "kv_cache": 1 - r["kv_cache_bytes_ratio"]}
                rows.append(row)
    return rows


def format_shape_table(rows: list[dict]) -> str:
    """A plain-text table of :func:`shape_rows`."""
    methods = list(rows[0]["savings"]) if rows else []
    head = (f"{'shape':<26} {'layout':<7} {'inputs':<20} {'s/N':>6} {'visual':>6} {'text':>5} {'share':>6} "
            + " ".join(f"{m + ' LM':>14} {m + ' whole':>15}" for m in methods))
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = " ".join(f"{r['savings'][m]['lm']:>14.1%} {r['savings'][m]['whole']:>15.1%}" for m in methods)
        lines.append(f"{r['shape']:<26} {r['layout']:<7} {', '.join(r['inputs']):<20} "
                     f"{str(r['split']) + '/' + str(r['layers']):>6} {r['visual_tokens']:>6} {r['text_tokens']:>5} "
                     f"{r['visual_share']:>6.1%} {cells}")
    return "\n".join(lines)
