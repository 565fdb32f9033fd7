"""`TrainArgs`: every setting of a training run, validated, saved next to its output.

Defaults follow the paper's recipe (SPEC §7): AdamW, weight decay 0, cosine schedule with
warmup, one epoch, and a higher learning rate for ``lf`` than for ``pc``/``kv`` (its single
fusion path gives a sparser gradient). The paper's exact rates were lost in extraction; ours are
chosen for the embedded tiny model and are overridable with ``--lr``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from dpvr.config import DISTILL_FEATURE_LOSSES as FEATURE_LOSSES
from dpvr.config import DPVR_VARIANTS, LR_SCHEDULERS

METHODS = ("dpvr", "lora", "full")
DEFAULT_LR = {"lf": 1e-3, "pc": 2e-4, "kv": 2e-4, "ideal": 2e-4, "lora": 2e-4, "full": 2e-5}


@dataclass
class TrainArgs:
    out: str
    data: str | None = None  # LLaVA conversation JSON / JSONL; default: the embedded train.json
    image_folder: str | None = None  # default: the folder holding --data
    model: str | None = None  # HF folder of a LLaVA model + processor; default: the embedded tiny LLaVA
    method: str = "dpvr"
    variant: str = "lf"
    split: int | None = None
    fusion_layers: list[int] | None = None
    num_fusion_layers: int | None = None
    side_depth: int = 1
    lora_r: int = 16
    lr: float | None = None
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.03
    lr_scheduler: str = "cosine"
    weight_decay: float = 0.0
    seed: int = 0
    bf16: bool = False
    gradient_checkpointing: bool = False
    max_samples: int | None = None  # use the first N records (after the seeded shuffle of the data order)
    eval_data: str | None = None  # held-out records for the before/after loss
    eval_samples: int = 64
    logging_steps: int = 5
    save_steps: int | None = None  # mid-run checkpoints (for --resume); None: only the final adapter
    resume: str | None = None  # a checkpoint folder, or "latest"
    skip_bad: bool = False
    allow_outside_paths: bool = False  # images may resolve outside the image folder (../, absolute, symlinks)
    progress: bool = True
    # self-distillation from the unrouted base (dpvr.train.distill; --method dpvr only)
    distill: bool = False
    distill_temperature: float = 1.0
    distill_kl_weight: float = 1.0
    distill_feature_loss: str = "mse"
    distill_feature_weight: float = 1.0
    distill_top_k: int = 0  # teacher logits kept per position: 0 = the whole vocabulary
    distill_cache: str | None = None  # folder of precomputed teacher targets (dpvr.train.teacher_cache)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.method == "dpvr" and self.variant not in DPVR_VARIANTS:
            raise ValueError(f"--variant must be lf, pc, kv or ideal for --method dpvr, got {self.variant!r}")
        for name in ("batch_size", "grad_accum", "side_depth", "lora_r", "logging_steps", "eval_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ValueError(f"--lr-scheduler {self.lr_scheduler!r} is not one of {', '.join(LR_SCHEDULERS)}")
        self._check_distill()
        if self.max_steps == -1 and not self.epochs > 0:
            raise ValueError(f"--epochs must be > 0 (or give --max-steps), got {self.epochs}")

    def _check_distill(self) -> None:
        if not self.distill:
            if self.distill_cache is not None:
                raise ValueError("--distill-cache needs --distill")
            return
        if self.method != "dpvr":
            raise ValueError(f"--distill trains a DPVR side branch from the unrouted base; --method {self.method} "
                             "has no routing to switch off (use --method dpvr)")
        if not self.distill_temperature > 0:
            raise ValueError(f"--distill-temperature must be > 0, got {self.distill_temperature}")
        for name in ("distill_kl_weight", "distill_feature_weight"):
            value = getattr(self, name)
            if not value >= 0 or value == float("inf"):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
        if self.distill_feature_loss not in FEATURE_LOSSES:
            raise ValueError(f"--distill-feature-loss must be one of {', '.join(FEATURE_LOSSES)}, "
                             f"got {self.distill_feature_loss!r}")
        if self.distill_top_k < 0:
            raise ValueError(f"--distill-top-k must be >= 0 (0: the whole vocabulary), got {self.distill_top_k}")

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return DEFAULT_LR[self.variant if self.method == "dpvr" else self.method]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"resolved_learning_rate": self.learning_rate}

    @classmethod
    def from_json_file(cls, path: str | Path) -> "TrainArgs":
        data = json.loads(Path(path).read_text())
        data.pop("resolved_learning_rate", None)
        return cls(**data)
