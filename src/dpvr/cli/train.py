"""``dpvr train``: train the side branch (or a LoRA / full fine-tuning baseline) on LLaVA conversation data."""

from __future__ import annotations

import argparse
import json
import sys

from dpvr.cli.help import hidden_alias

from dpvr.config import DISTILL_FEATURE_LOSSES as FEATURE_LOSSES
from dpvr.config import DPVR_VARIANTS, LR_SCHEDULERS


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices like 6,7, got {text!r}") from err


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a DPVR side branch (or a LoRA / full baseline)",
        description=(
            "Trains on LLaVA conversation data with the Hugging Face Trainer: AdamW, weight decay 0, cosine schedule "
            "with warmup, one epoch by default. Only the side branch trains (--method dpvr). Defaults: the embedded "
            "tiny LLaVA and its generated training set. Runs under `accelerate launch` for several processes."
        ),
        epilog=("Progress: one bar with step/total, loss and time left; --quiet hides it. With --save-steps, "
                "Ctrl-C and rerunning with --resume latest continues from the last checkpoint."),
    )
    p.add_argument("--out", required=True, help="output folder (adapter, loss curve, arguments, result)")
    p.add_argument("--model", help="LLaVA model folder with its processor (default: the embedded tiny LLaVA)")
    p.add_argument("--data", help="LLaVA conversation JSON or JSONL (default: the embedded train.json)")
    p.add_argument("--image-folder", help="folder the records' image paths are relative to (default: --data's folder)")
    p.add_argument("--method", choices=["dpvr", "lora", "full"], default="dpvr",
                   help="dpvr: train the side branch; lora: peft LoRA on the LM; full: fine-tune the whole LM")
    p.add_argument("--variant", choices=list(DPVR_VARIANTS), default="lf", help="DPVR variant (--method dpvr)")
    p.add_argument("--split", type=int, help="split layer s (default: 18/32 of the layers, the paper's 7B ratio)")
    p.add_argument("--fusion-layers", type=_int_list, help="explicit fusion layers for lf, e.g. 6,7")
    p.add_argument("--num-fusion-layers", type=int, help="lf: fuse in the last K layers (default 1)")
    p.add_argument("--side-depth", type=int, default=1, help="side-branch depth D")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank (--method lora; the paper uses 16 and 64)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: lf 1e-3, pc/kv/ideal 2e-4, lora 2e-4, full 2e-5)")
    p.add_argument("--epochs", type=float, default=1.0, help="epochs over the data")
    p.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimizer steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, default=8, help="samples per device per step")
    p.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    p.add_argument("--warmup-ratio", type=float, default=0.03, help="linear warmup as a share of the steps")
    p.add_argument("--lr-scheduler", choices=list(LR_SCHEDULERS), default="cosine",
                   help="learning-rate schedule after the warmup (HF Trainer's lr_scheduler_type)")
    p.add_argument("--seed", type=int, default=0, help="one seed for initialisation and data order")
    p.add_argument("--bf16", action="store_true", help="bfloat16 weights and mixed precision")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")
    p.add_argument("--max-samples", type=int, help="train on at most this many records")
    p.add_argument("--eval-data", help="held-out records for the before/after loss (default: 10%% of --data, max --eval-samples)")
    p.add_argument("--eval-samples", type=int, default=64, help="held-out records to evaluate")
    p.add_argument("--logging-steps", type=int, default=5, help="log the loss every N steps")
    p.add_argument("--save-steps", type=int, help="write a resumable checkpoint every N steps")
    p.add_argument("--resume", help="resume from a checkpoint folder, or 'latest' in --out/checkpoints")
    p.add_argument("--skip-bad", action="store_true", help="skip bad records (missing image, too long, ...) and count them")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    hidden_alias(p, "--no-progress", "quiet", action="store_true")
    p.add_argument("--allow-outside-paths", action="store_true",
                   help="let image paths resolve outside --image-folder (../, absolute paths, symlinks out)")
    d = p.add_argument_group("self-distillation from the unrouted base (--method dpvr)")
    d.add_argument("--distill", action="store_true",
                   help="add a KL term (routed vs unrouted next-token distributions) and a feature term (side-branch "
                        "states vs the base's states entering the fusion layer) to the LM loss")
    d.add_argument("--distill-temperature", type=float, default=1.0, help="temperature T of the KL term (scaled by T²)")
    d.add_argument("--distill-kl-weight", type=float, default=1.0, help="weight of the KL term (0: logged only)")
    d.add_argument("--distill-feature-loss", choices=list(FEATURE_LOSSES), default="mse",
                   help="mse (divided by the teacher states' squared norm) or cosine (mean 1 - cos)")
    d.add_argument("--distill-feature-weight", type=float, default=1.0, help="weight of the feature term (0: logged only)")
    d.add_argument("--distill-top-k", type=int, default=0,
                   help="teacher logits kept per position, renormalised (0: the whole vocabulary)")
    d.add_argument("--distill-cache", metavar="DIR",
                   help="compute the teacher's targets once into DIR (or reuse them) instead of a teacher forward "
                        "per step; share DIR between runs on the same data")
    p.set_defaults(func=run)


def run(args) -> int:
    from dpvr.progress import hf_bars
    from dpvr.train import TrainArgs, train

    targs = TrainArgs(
        out=args.out, data=args.data, image_folder=args.image_folder, model=args.model, method=args.method,
        variant=args.variant, split=args.split, fusion_layers=args.fusion_layers,
        num_fusion_layers=args.num_fusion_layers, side_depth=args.side_depth, lora_r=args.lora_r, lr=args.lr,
        epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
        warmup_ratio=args.warmup_ratio, seed=args.seed, bf16=args.bf16,
        gradient_checkpointing=args.gradient_checkpointing, max_samples=args.max_samples, eval_data=args.eval_data,
        eval_samples=args.eval_samples, logging_steps=args.logging_steps, save_steps=args.save_steps,
        resume=args.resume, skip_bad=args.skip_bad, allow_outside_paths=args.allow_outside_paths,
        progress=not args.quiet, lr_scheduler=args.lr_scheduler, distill=args.distill,
        distill_temperature=args.distill_temperature, distill_kl_weight=args.distill_kl_weight,
        distill_feature_loss=args.distill_feature_loss, distill_feature_weight=args.distill_feature_weight,
        distill_top_k=args.distill_top_k, distill_cache=args.distill_cache,
    )
    try:
        with hf_bars(not args.quiet):  # --quiet also hides transformers' weight-loading bar
            summary = train(targs)
    except KeyboardInterrupt:
        hint = ("rerun with --resume latest to continue from the last checkpoint" if args.save_steps else
                "nothing was saved mid-run (add --save-steps N to make a run resumable); rerun the same command")
        print(f"\ndpvr train: interrupted; {hint}", file=sys.stderr)
        return 130
    keys = ("method", "variant", "trainable_parameters", "global_steps", "eval_loss_before", "eval_loss_after",
            "wall_seconds", "steps_per_second")
    print(json.dumps({k: summary[k] for k in keys}, indent=2))
    return 0
