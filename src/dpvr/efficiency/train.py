"""Training-step time and peak memory of DPVR variants against LoRA and full fine-tuning, on one shape.

Run it as ``dpvr bench train --config cpu-mid --threads 2`` or from Python::

    from dpvr.efficiency.train import TrainSettings, measure_training
    report = measure_training("tiny", ["lf", "pc", "kv", "lora16", "full"], TrainSettings(repeats=2))

A step is forward with labels + backward + ``AdamW.step`` + ``zero_grad(set_to_none=True)``, on a
random-weight model of the shape and a random prompt laid out like LLaVA's (system, one image,
text; labels on the last half of the text, -100 elsewhere). Trainable parameters per method:

=========  ======================================================================================
lf/pc/kv   the side branch only (``dpvr.get_dpvr_model``); every DPVR variant wraps the one frozen base
ideal      same; note its side branch gets no gradient under LLaVA labels (SPEC §3)
loraR      LoRA of rank R (``lora16``, ``lora64``, any ``lora<R>``) on every linear layer of the
           language model (q/k/v/o, gate/up/down), through ``peft``; alpha = 2R
full       the language model and the projector (LLaVA-1.5's stage-2 recipe); the vision tower frozen
=========  ======================================================================================

Methods are interleaved round by round (rotating order) after ``warmup`` rounds, like the latency
harness; LoRA and full fine-tuning need their own copy of the base model, so memory grows with the
method list. Peak memory is :mod:`dpvr.efficiency.memory`'s, for one step after warm-up (optimizer
states already exist then and are reported separately as ``optimizer_state_bytes``).
"""

from __future__ import annotations

import copy
import re
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from dpvr.backbones import adapter_for
from dpvr.config import DPVR_VARIANTS, DPVRConfig
from dpvr.efficiency.latency import DTYPES, bench_setup, Timer, timing_method, build_random_model, make_inputs, summarise
from dpvr.efficiency.memory import memory_method, track_peak
from dpvr.efficiency.report import machine_info
from dpvr.shapes import shape_name

TRAIN_DPVR = DPVR_VARIANTS
DEFAULT_TRAIN_METHODS = ("lf", "pc", "kv", "lora16", "full")


def check_train_method(name: str) -> None:
    if name in TRAIN_DPVR or name == "full" or re.fullmatch(r"lora[1-9]\d*", name):
        return
    raise ValueError(f"unknown training method {name!r}: choose from {', '.join(TRAIN_DPVR)}, full, lora<R> (e.g. lora16)")


@dataclass
class TrainSettings:
    """What :func:`measure_training` runs."""

    text_tokens: int = 128
    batch_size: int = 1
    system_tokens: int = 35
    warmup: int = 1
    repeats: int = 3
    dtype: str = "float32"
    device: str = "cpu"
    threads: int | None = 2
    attn: str = "sdpa"
    seed: int = 0
    lr: float = 1e-5
    measure_memory: bool = True
    clock: str = "wall"
    split: int | None = None
    num_fusion_layers: int | None = None
    fusion_layers: list[int] | None = None
    side_depth: int = 1
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}: choose one of {', '.join(DTYPES)}")
        if self.repeats < 1 or self.warmup < 0 or self.text_tokens < 2 or self.batch_size < 1:
            raise ValueError("repeats >= 1, warmup >= 0, text_tokens >= 2 and batch_size >= 1 are needed")


def _prepare(name: str, base, split: int, s: TrainSettings):
    """The trainable model of one method (and the params its optimizer owns)."""
    if name in TRAIN_DPVR:
        import dpvr

        fusion = {"num_fusion_layers": s.num_fusion_layers, "fusion_layers": s.fusion_layers} if name == "lf" else {}
        model = dpvr.get_dpvr_model(base, DPVRConfig(variant=name, split=split, side_depth=s.side_depth, **fusion))
    elif name == "full":
        model = copy.deepcopy(base)
        model.requires_grad_(False)
        for module in adapter_for(model).full_finetune_modules():
            module.requires_grad_(True)
    else:
        from peft import LoraConfig, get_peft_model

        r = int(name[4:])
        model = get_peft_model(copy.deepcopy(base), LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0,
                                                               target_modules=adapter_for(base).lora_target_modules()))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    return model, params


def measure_training(config, method_names: list[str], settings: TrainSettings | None = None,
                     progress: bool = True) -> dict:
    """Time a training step of each method on a random-weight model of ``config``; a JSON-ready report."""
    s = settings or TrainSettings()
    for name in method_names:
        check_train_method(name)
    names = list(dict.fromkeys(method_names))
    cfg, device, dtype, split = bench_setup(config, s)
    DPVRConfig(variant="lf", split=split, num_fusion_layers=s.num_fusion_layers, fusion_layers=s.fusion_layers,
               side_depth=s.side_depth).resolve(cfg.text_config.num_hidden_layers)

    base = build_random_model(cfg, dtype, device, s.attn, s.seed)
    inputs = make_inputs(cfg, s.batch_size, s.system_tokens, s.text_tokens, 0, dtype, device, s.seed)
    labels = torch.full_like(inputs["input_ids"], -100)
    answer = s.text_tokens // 2
    labels[:, -answer:] = inputs["input_ids"][:, -answer:]
    # Every input the family's forward takes (pixel tensors, grids, image sizes, token types), plus the labels.
    batch = {k: v for k, v in inputs.items() if k != "decode_tokens"} | {"labels": labels}

    setups = {}
    # LoRA and full fine-tuning train (a copy of) the base, so they are prepared first; the DPVR
    # variants then all wrap the one frozen base.
    for name in sorted(names, key=lambda n: n in TRAIN_DPVR):
        model, params = _prepare(name, base, split, s)
        opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=0.0)
        setups[name] = (model, params, opt)
    del base

    def step(name):
        model, _, opt = setups[name]
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    timer = Timer(device, s.clock)
    times = {n: [] for n in names}
    peaks = {}
    bar = tqdm(total=(s.warmup + s.repeats) * len(names) + s.measure_memory * len(names), desc="bench train",
               unit="step", disable=not progress)
    for rnd in range(s.warmup + s.repeats):
        shift = rnd % len(names)
        for name in names[shift:] + names[:shift]:
            _, seconds = timer(step, name)
            if rnd >= s.warmup:
                times[name].append(seconds)
            bar.update()
    if s.measure_memory:
        for name in names:
            with track_peak(device) as mem:
                step(name)
            peaks[name] = mem["peak_bytes"]
            bar.update()
    bar.close()

    ref = "pc" if "pc" in names else names[0]
    ref_median = summarise(times[ref])["median"]
    results = []
    for name in names:
        model, params, opt = setups[name]
        trainable = sum(p.numel() for p in params)
        state_bytes = sum(t.numel() * t.element_size() for st in opt.state.values() for t in st.values()
                          if isinstance(t, torch.Tensor))
        st = summarise(times[name])
        results.append({
            "method": name, "label": name, "step_s": st,
            f"step_ratio_to_{ref}": st["median"] / ref_median,
            "peak_step_bytes": peaks.get(name),
            "trainable_parameters": trainable,
            "optimizer_state_bytes": state_bytes,
        })
    return {
        "kind": "train",
        "shape": shape_name(cfg),
        "settings": asdict(s) | {"split": split},
        "reference": ref,
        "machine": machine_info(device),
        "timing_method": timing_method(device, s.clock),
        "memory_method": memory_method(device) + "; one step after warm-up, optimizer states already allocated",
        "results": results,
    }


def format_train_table(report: dict) -> str:
    ref = report["reference"]
    head = f"{'method':<10} {'step s':>8} {'p25':>7} {'p75':>7} {f'/ {ref}':>7} {'peak MiB':>9} {'trainable':>13} {'opt MiB':>8}"
    lines = [head, "-" * len(head)]
    for r in report["results"]:
        peak = "" if r["peak_step_bytes"] is None else f"{r['peak_step_bytes'] / 2**20:.1f}"
        lines.append(
            f"{r['label']:<10} {r['step_s']['median']:>8.3f} {r['step_s']['p25']:>7.3f} {r['step_s']['p75']:>7.3f} "
            f"{r[f'step_ratio_to_{ref}']:>7.3f} {peak:>9} {r['trainable_parameters']:>13,d} "
            f"{r['optimizer_state_bytes'] / 2**20:>8.1f}"
        )
    return "\n".join(lines)
