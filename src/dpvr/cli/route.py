"""``dpvr route``: route one prompt through every variant and compare each with vanilla."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser(
        "route",
        help="route one prompt through every DPVR variant and compare with vanilla",
        description=(
            "Wraps a LLaVA model with each variant (untrained side branch, copied from layer s), runs one prompt, "
            "and prints how far each moves from vanilla, whether cached greedy decode equals a no-cache recompute, "
            "and how many positions the deep layers process. The model is a small random-weight LLaVA built "
            "on the spot (no download)."
        ),
    )
    p.add_argument("--split", type=int, help="split layer s (default: half the layers)")
    p.add_argument("--variants", default="vanilla,lf,pc,kv,ideal", help="comma-separated variants to compare")
    p.add_argument("--image-tokens", type=int, default=64, help="image tokens of the random model (a square number)")
    p.add_argument("--text-tokens", type=int, default=24, help="text tokens after the image in the random prompt")
    p.add_argument("--new-tokens", type=int, default=8, help="tokens to decode for the cache check")
    p.add_argument("--seed", type=int, default=0, help="seed of the random model and prompt")
    p.add_argument("--json", dest="json_out", help="also write the rows to this JSON file")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from dpvr.cli import UserError
    from dpvr.compare import compare_variants
    from dpvr.io import write_json_atomic
    from dpvr.random_model import random_llava, random_prompt

    side = int(round(args.image_tokens ** 0.5))
    if side * side != args.image_tokens:
        raise UserError(f"--image-tokens must be a square number (patch grid), got {args.image_tokens}")
    torch.manual_seed(args.seed)
    base = random_llava(image_grid=side, seed=args.seed)
    input_ids, pixel_values = random_prompt(base, text_tokens=args.text_tokens, seed=args.seed)
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    rows = compare_variants(base, input_ids, pixel_values, split=args.split, variants=variants, new_tokens=args.new_tokens)
    n_layers = base.config.text_config.num_hidden_layers
    print(f"random LLaVA: {n_layers} layers, prompt {input_ids.shape[1]} tokens "
          f"({args.image_tokens} image); modes: F full, t text-only, k image K/V, U fuse")
    header = f"{'variant':8} {'modes':{n_layers}}  {'max|Δlogit|':>11}  {'top-1 = vanilla':>15}  {'cache = recompute':>17}  {'deep positions/layer':>20}"
    print(header)
    for r in rows:
        print(f"{r['variant']:8} {r['modes']:{n_layers}}  {r['max_abs_logit_diff_vs_vanilla']:11.2e}  "
              f"{str(r['top1_agrees_with_vanilla']):>15}  {str(r['cached_decode_equals_recompute']):>17}  "
              f"{r['deep_positions_per_layer']:20.0f}")
    if args.json_out:
        write_json_atomic(args.json_out, {"rows": rows, "settings": vars(args) | {"func": None}})
    return 0
