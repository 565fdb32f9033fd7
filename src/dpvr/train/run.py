"""`train(args)`: one training run with the Hugging Face `Trainer`, from data to a saved adapter.

The same code runs on one CPU process, several (``accelerate launch --cpu --num_processes 2``,
gloo) and many GPUs (DDP, FSDP, DeepSpeed through accelerate configs). One seed fixes the
initialisation and the data order; ``--resume`` continues the same order from a checkpoint.

Output folder::

    adapter/            dpvr: side-branch weights + dpvr_config.json (lora: peft adapter; full: model)
    train_args.json     every setting, enough to rerun (`dpvr train --args-file`)
    loss.jsonl          logged training loss (and eval loss before/after)
    loss.png            the curve
    result.json         trainable parameters, steps, wall time, held-out loss before/after, grad probe
    checkpoints/        mid-run checkpoints when --save-steps is given
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from dpvr.adapter import load_side_branch_weights, write_adapter_files
from dpvr.backbones import adapter_for
from dpvr.config import DPVRConfig
from dpvr.io import commit_unit, discard_staging, recover_units, staging_dir, write_json_atomic, write_text_atomic
from dpvr.loading import load_model
from dpvr.model import DPVRModel, get_dpvr_model
from dpvr.outlock import check_out, output_lock
from dpvr.train import checkpoints as ckpt
from dpvr.train.args import TrainArgs
from dpvr.train.data import DataCollator, LlavaConversationDataset, load_records, num_image_tokens
from dpvr.train.family_data import ProcessorConversationDataset
from dpvr.train.launch import check_launch
from dpvr.train.progress import use_progress
from dpvr.train.teacher_cache import INDEX_KEY

log = logging.getLogger(__name__)

ZERO_GRADIENT_WHY = (
    "the side-branch gradient is exactly zero: in 'ideal' no deep layer lets a text position attend to the "
    "side branch's output, and LLaVA labels are -100 at every image position, so the loss does not depend on "
    "the side branch at all (paper, Appendix A). Training changes nothing; use 'lf' (one fusion layer) instead."
)

ZERO_GRADIENT_TEXT_ONLY = (
    "the side-branch gradient of the first step is exactly zero: its batch has no image, so the side branch takes "
    "no part in the loss. That is expected for text-only samples; batches with images train it."
)

ZERO_GRADIENT_OUT_OF_REACH = (
    "the side-branch gradient of the first step is exactly zero although its batch has images: no answer token "
    "attends to an image position in the fusion layers, e.g. sliding-window fusion layers (Gemma 3's last layer "
    "is one) whose window ends before the answers. Choose full-attention fusion layers with --fusion-layers."
)

#: model inputs that carry images or videos (a batch without any cannot train the side branch)
VISUAL_INPUTS = ("pixel_values", "pixel_values_videos")


def default_split(num_layers: int) -> int:
    """The paper's 7B split ratio (18 of 32 layers) applied to another depth, kept inside 1..N-1."""
    return max(1, min(num_layers - 1, round(num_layers * 18 / 32)))


def resolve_inputs(args: TrainArgs) -> tuple[str, str, str]:
    """(model folder, data file, image folder), filling the embedded defaults."""
    model = args.model
    data = args.data
    if model is None or data is None:
        from dpvr import embedded

        model = model or str(embedded.checkpoint_path())
        data = data or str(embedded.benchmark_dir() / "train.json")
    image_folder = args.image_folder or str(Path(data).parent)
    return model, data, image_folder


def load_base(model_dir: str, bf16: bool = False):
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a model folder (no config.json); pass --model with a checkpoint of a supported family")
    base, processor, _ = load_model(path, dtype="bfloat16" if bf16 else "float32", device="cpu")
    return base, processor


def datasets_for(base, processor, image_folder, max_length, skip_bad: bool, allow_outside_paths: bool = False):
    """(records -> dataset, collator class) for the base's family (one collator for all).

    LLaVA-1.5 (a fixed number of image tokens per image) keeps its own tokenisation; every other family
    lets its processor expand the images (grid- or AnyRes-dependent counts) and passes all its outputs on.
    """
    if base.config.model_type == "llava":
        image_tokens = num_image_tokens(base.config)
        return (lambda recs: LlavaConversationDataset(recs, image_folder, processor, image_tokens, max_length,  # noqa: E731
                                                      skip_bad, allow_outside_paths)), DataCollator
    visual = adapter_for(base).all_visual_ids()
    return (lambda recs: ProcessorConversationDataset(recs, image_folder, processor, visual, max_length,  # noqa: E731
                                                      skip_bad, allow_outside_paths)), DataCollator


def build_trainable(base, args: TrainArgs):
    """The model to train: a DPVR wrapper (side branch only), a peft LoRA model, or the LM unfrozen."""
    n = base.config.get_text_config().num_hidden_layers
    if args.method == "dpvr":
        split = args.split if args.split is not None else default_split(n)
        config = DPVRConfig(variant=args.variant, split=split, fusion_layers=args.fusion_layers,
                            num_fusion_layers=args.num_fusion_layers, side_depth=args.side_depth)
        return get_dpvr_model(base, config)
    if args.method == "lora":
        from peft import LoraConfig, get_peft_model

        targets = adapter_for(base).lora_target_modules()
        return get_peft_model(base, LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0,
                                               target_modules=targets))
    for p in base.parameters():
        p.requires_grad_(False)
    for module in adapter_for(base).full_finetune_modules():
        for p in module.parameters():
            p.requires_grad_(True)
    return base


class _Trainer(Trainer):
    """Saves and resumes a DPVR model as its adapter (the side branch), everything else as HF does.

    Each checkpoint gets a completeness marker written last (dpvr.train.checkpoints), with the running
    loss sum, so ``--resume latest`` skips a partial checkpoint and a resumed run reports the same loss.

    A batch whose loss does not reach a trainable parameter (text only: the side branch takes no part)
    trains with a zero gradient instead of failing in backward: that is a fact of the batch, not an error.
    """

    distiller = None  # a dpvr.train.distill.Distiller with --distill

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        index = inputs.pop(INDEX_KEY, None)
        probe = next((c for c in self.callback_handler.callbacks if isinstance(c, _GradProbe)), None)
        if probe is not None and probe.first_step is None and model.training:
            probe.saw_visual |= any(inputs.get(k) is not None and inputs[k].numel() > 0 for k in VISUAL_INPUTS)
        if self.distiller is not None and model.training:
            result = self._distill_loss(model, inputs, index, return_outputs, kwargs.get("num_items_in_batch"))
        else:
            result = super().compute_loss(model, inputs, return_outputs=return_outputs, **kwargs)
        loss = result[0] if return_outputs else result
        if torch.is_grad_enabled() and not loss.requires_grad:
            # Every trainable parameter joins the graph with a zero coefficient: zero gradients, and every
            # process of a multi-process run still takes part in the gradient all-reduce.
            loss = loss + sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)
            return (loss, *result[1:]) if return_outputs else loss
        return result

    def _distill_loss(self, model, inputs, index, return_outputs, num_items_in_batch):
        """The LM loss plus the distillation terms, normalised as the Trainer normalises the LM loss."""
        inner = self.accelerator.unwrap_model(model)
        targets = self.distiller.targets(inner, inputs, index)  # no grad: the unrouted base, or the cache
        with self.distiller.capture(inner, inputs["input_ids"]) as side:
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                                 num_items_in_batch=num_items_in_batch)
        token_count = None
        if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            # the LM loss is sum / num_items_in_batch (whole accumulated batch, all processes) times the
            # process count (Trainer.compute_loss); the Trainer does not divide it by the accumulation steps
            divisor, feature_divisor = num_items_in_batch, self.current_gradient_accumulation_steps
            scale = 1
            if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                scale = self.accelerator.num_processes // self.get_tp_size()
                device = inputs["input_ids"].device
                token_count = lambda n: int(self.accelerator.reduce(torch.tensor(n, device=device), "sum"))  # noqa: E731
        else:  # a per-batch mean, divided by the accumulation steps by the Trainer
            divisor, feature_divisor, scale = max(1, int(targets.logit_values.shape[0])), 1, 1
        extra = self.distiller.extra_loss(outputs.logits, inputs["labels"], side.states, targets, divisor, scale,
                                          feature_divisor, token_count)
        if extra is not None:
            loss = loss + extra
        return (loss, outputs) if return_outputs else loss

    def log(self, logs, *args, **kwargs):
        if self.distiller is not None and "loss" in logs:
            logs.update(self.distiller.pop_metrics())
        super().log(logs, *args, **kwargs)

    def _save(self, output_dir=None, state_dict=None):
        model = self.accelerator.unwrap_model(self.model)
        if isinstance(model, DPVRModel):
            write_adapter_files(model, output_dir or self.args.output_dir)
            return
        super()._save(output_dir, state_dict)

    def _save_checkpoint(self, model, trial):
        state = ckpt.loss_state(self)
        probe = next((c for c in self.callback_handler.callbacks if isinstance(c, _GradProbe)), None)
        state["first_step_gradient"] = probe.first_step if probe else None
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            ckpt.write_marker(folder, state)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        target = self.accelerator.unwrap_model(model or self.model)
        if isinstance(target, DPVRModel):
            load_side_branch_weights(target, resume_from_checkpoint)
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)


class _GradProbe(TrainerCallback):
    """Measures the trainable gradient at the first optimizer step; says why when it is exactly zero."""

    def __init__(self):
        self.first_step = None
        self.saw_visual = False  # set by _Trainer.compute_loss for the batches of the first step

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.first_step is not None or model is None:
            return
        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        nonzero = sum(int(torch.count_nonzero(g)) for g in grads)
        norm = math.sqrt(sum(float(g.float().pow(2).sum()) for g in grads))
        self.first_step = {"grad_norm": norm, "nonzero_grad_elements": nonzero, "tensors_with_grad": len(grads)}
        if nonzero == 0 and state.is_world_process_zero:
            inner = getattr(model, "module", model)
            config = getattr(inner, "dpvr_config", None)
            if config is None or config.variant == "ideal":
                why = ZERO_GRADIENT_WHY
            else:
                why = ZERO_GRADIENT_OUT_OF_REACH if self.saw_visual else ZERO_GRADIENT_TEXT_ONLY
            log.warning(why)
            print(f"dpvr train: {why}", flush=True)


def _split_heldout(records: list[dict], args: TrainArgs, skipped: dict | None = None) -> tuple[list[dict], list[dict]]:
    if args.eval_data:
        return records, load_records(args.eval_data, args.skip_bad, skipped)[: args.eval_samples]
    n_eval = min(args.eval_samples, len(records) // 10)
    if n_eval == 0:  # too few records to hold any out: the before/after loss is measured on training records
        log.warning("fewer than 10 records: evaluating on training records (pass --eval-data for a held-out set)")
        return records, records[: args.eval_samples]
    order = list(range(len(records)))
    random.Random(args.seed).shuffle(order)
    held = set(order[:n_eval])
    return [r for i, r in enumerate(records) if i not in held], [records[i] for i in sorted(held)]


@torch.no_grad()
def heldout_loss(model, dataset, collator, batch_size: int) -> float:
    """Token-weighted mean loss over ``dataset`` (every supervised token counts once)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(dataset), batch_size):
        batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        batch = {k: v.to(device) for k, v in batch.items()}
        n = int((batch["labels"][:, 1:] != -100).sum())
        total += float(model(**batch, use_cache=False).loss) * n
        count += n
    model.train(was_training)
    return total / max(count, 1)


def resolve_resume(args: TrainArgs, out: Path) -> str | None:
    """The checkpoint to resume from: 'latest' is the newest complete one; an explicit one must be complete."""
    if not args.resume:
        return None
    if args.resume == "latest":
        resume = ckpt.latest_complete(out / "checkpoints")
        if resume is None:
            raise ValueError(f"--resume latest: no complete checkpoint in {out / 'checkpoints'} "
                             "(train with --save-steps first)")
        return resume
    ckpt.check_complete(args.resume)
    return args.resume


def train(args: TrainArgs) -> dict:
    """Run one training; returns the summary also written to ``result.json``.

    Holds ``out``'s lock (a second run on the same folder is refused); the outputs are committed as
    one unit at the end, so a kill leaves the previous run's outputs (and the checkpoints) intact.
    """
    out = Path(args.out)
    check_launch()  # before the lock and any work: FSDP without a GPU is refused in one line
    if int(os.environ.get("RANK", "0")) != 0:  # the other processes of one multi-process run share rank 0's lock
        check_out(out)
        return _train(args, out)
    with output_lock(out):
        recover_units(out, "train")
        return _train(args, out)


def _train(args: TrainArgs, out: Path) -> dict:
    from transformers import set_seed

    resume = resolve_resume(args, out)  # before any work: a partial checkpoint is refused at once
    model_dir, data_path, image_folder = resolve_inputs(args)
    schema_skipped: dict[str, str] = {}
    records = load_records(data_path, args.skip_bad, schema_skipped)  # bad input is reported before --out is made
    train_records, eval_records = _split_heldout(records, args, schema_skipped)
    if args.max_samples is not None:
        train_records = train_records[: args.max_samples]

    set_seed(args.seed)
    base, processor = load_base(model_dir, args.bf16)
    max_length = getattr(base.config.get_text_config(), "max_position_embeddings", None)
    make, collator_class = datasets_for(base, processor, image_folder, max_length, args.skip_bad,
                                        args.allow_outside_paths)
    train_set, eval_set = make(train_records), make(eval_records)
    model = build_trainable(base, args)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    pad_id = processor.tokenizer.pad_token_id if processor.tokenizer.pad_token_id is not None else 0

    targs = TrainingArguments(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        lr_scheduler_type=args.lr_scheduler,
        warmup_steps=args.warmup_ratio,  # a float < 1 is a ratio of the total steps in transformers 5
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        optim="adamw_torch",
        logging_steps=args.logging_steps,
        save_strategy="steps" if args.save_steps else "no",
        save_steps=args.save_steps or 500,
        seed=args.seed,
        data_seed=args.seed,
        bf16=args.bf16,
        activation_checkpointing=args.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if args.gradient_checkpointing else None,
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=True,  # dpvr.train.progress shows the bar (step/total, loss, ETA)
    )
    distiller, train_data, train_collator = None, train_set, collator_class(pad_id)
    if args.distill:
        distiller, train_data, train_collator = _distillation(args, model, train_set, train_collator, data_path,
                                                              image_folder, targs)
    probe = _GradProbe()
    trainer = _Trainer(model=model, args=targs, train_dataset=train_data, data_collator=train_collator,
                       callbacks=[probe])
    trainer.distiller = distiller
    use_progress(trainer, f"train {args.variant if args.method == 'dpvr' else args.method}", args.progress)
    saved = ckpt.read_loss_state(resume) if resume else None
    trainer.add_callback(ckpt.RestoreLossState(trainer, saved))
    if saved:
        probe.first_step = saved.get("first_step_gradient")  # measured at step 1, before the interruption
    # Held-out loss outside the Trainer: evaluating through it before train() leaves the model marked as
    # prepared, and train() then skips the DDP wrap in multi-process runs.
    collator = collator_class(pad_id)
    eval_before = heldout_loss(model, eval_set, collator, args.batch_size)
    start = time.perf_counter()
    finished = ckpt.finished_state(resume) if resume else None
    if finished:  # the checkpoint is the run's last step (a kill after it): HF would train one step more
        trainer._load_from_checkpoint(resume)
        trainer.state.log_history = finished["log_history"]
        global_step = finished["global_step"]
        total_loss = (saved or {}).get("total_loss_scalar", float("nan")) + (saved or {}).get("pending", 0.0)
    else:
        result = trainer.train(resume_from_checkpoint=resume)
        global_step, total_loss = result.global_step, trainer._total_loss_scalar
    wall = time.perf_counter() - start
    eval_after = heldout_loss(model, eval_set, collator, args.batch_size)

    summary = {
        "method": args.method,
        "variant": args.variant if args.method == "dpvr" else None,
        "dpvr_config": model.dpvr_config.to_dict() if isinstance(model, DPVRModel) else None,
        "trainable_parameters": trainable,
        "train_records": len(train_set),
        "skipped_records": len(schema_skipped) + len(train_set.skipped) + len(eval_set.skipped),
        "eval_records": len(eval_set),
        "global_steps": global_step,
        # the mean over every step of the run, resumed ones included (HF averages the steps of this call only)
        "train_loss": total_loss / max(global_step, 0.001),
        "eval_loss_before": eval_before,
        "eval_loss_after": eval_after,
        "first_step_gradient": probe.first_step,
        "wall_seconds": wall,
        "steps_per_second": global_step / wall if wall > 0 else None,
        "model": model_dir,
        "data": data_path,
    }
    if trainer.is_world_process_zero():
        _write_outputs(out, model, args, summary, ckpt.loss_rows(trainer.state.log_history))
    return summary


def _distillation(args: TrainArgs, model, train_set, collator, data_path: str, image_folder: str, targs):
    """(Distiller, training dataset, collator): with a cache, the targets are computed (or found) here, once."""
    from dpvr.train.distill import Distiller
    from dpvr.train.teacher_cache import IndexedCollator, IndexedDataset, cache_key, ensure_cache

    distiller = Distiller(model, args.distill_temperature, args.distill_kl_weight, args.distill_feature_loss,
                          args.distill_feature_weight, args.distill_top_k)
    if args.distill_cache is None:
        return distiller, train_set, collator
    model.to(targs.device)  # where the Trainer puts it anyway
    with targs.main_process_first(desc="teacher targets"):  # rank 0 computes; the others then read the cache
        distiller.cache = ensure_cache(args.distill_cache, model, train_set, collator, distiller.layers,
                                       cache_key(model.base, data_path, image_folder, args.distill_top_k),
                                       args.batch_size, progress=args.progress)
    return distiller, IndexedDataset(train_set), IndexedCollator(collator)


def _write_outputs(out: Path, model, args: TrainArgs, summary: dict, train_rows: list[dict]) -> None:
    """Stage every output, then commit them as one unit (result.json last)."""
    from dpvr.tiny.plots import plot_losses

    staging = staging_dir(out, "train")
    try:
        weights = "adapter" if isinstance(model, DPVRModel) or args.method == "lora" else "model"
        model.save_pretrained(staging / weights)
        rows = list(train_rows)
        for name in ("eval_loss_before", "eval_loss_after"):
            step = 0 if name.endswith("before") else summary["global_steps"]
            rows.append({"stage": "eval", "step": step, "loss": summary[name]})
        write_text_atomic(staging / "loss.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        write_json_atomic(staging / "train_args.json", args.to_dict())
        write_json_atomic(staging / "result.json", summary)
        plot_losses(staging / "loss.jsonl", staging / "loss.png", smooth=5)
        commit_unit(out, staging, [weights, "loss.jsonl", "train_args.json", "loss.png", "result.json"])
    finally:
        discard_staging(staging)
