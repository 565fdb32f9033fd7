"""``dpvr tiny build``: data -> tokenizer -> (a) CLIP -> (b) align -> (c) instruct -> eval -> checkpoint.

    from dpvr.tiny.build import build, BuildConfig
    build("runs/tiny", BuildConfig.full(seed=0))

Output folder::

    <out>/                 a stock LLaVA checkpoint: config.json, model.safetensors, tokenizer,
                           processor (CLIP image processor + chat template), build.json,
                           losses.jsonl, losses.png
    <out>/data/            the generated data the build trained and evaluated on
    <out>/work/            intermediate files (CLIP weights)

Steps, not seconds, bound every stage, so the same seed gives the same weights on the same
machine (same torch build and thread count).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from dpvr.data.generate import DataConfig, generate_dataset, verify_dataset
from dpvr.data.questions import CAPTION_PROMPTS, FAMILIES
from dpvr.tiny.model import TinyArch

CHECKPOINT_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                    "tokenizer_config.json", "processor_config.json", "chat_template.jinja")


@dataclass(frozen=True)
class StageConfig:
    steps: int
    lr: float
    batch: int  # images per batch (CLIP) or tokens per batch (LM stages)
    warmup: int = 50
    weight_decay: float = 0.0


@dataclass(frozen=True)
class BuildConfig:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    arch: TinyArch = field(default_factory=TinyArch)
    clip: StageConfig = StageConfig(steps=600, lr=1e-3, batch=256, warmup=50, weight_decay=0.1)
    align: StageConfig = StageConfig(steps=600, lr=1e-3, batch=4096, warmup=50)
    instruct: StageConfig = StageConfig(steps=3000, lr=5e-4, batch=4096, warmup=100)
    eval_limit: int | None = None  # items per family (None: all)
    threads: int = 2

    @classmethod
    def full(cls, seed: int = 0) -> "BuildConfig":
        return cls(seed=seed, data=DataConfig(seed=seed))

    @classmethod
    def quick(cls, seed: int = 0) -> "BuildConfig":
        """A ~1-minute smoke version (tests): tiny data, few steps, small eval."""
        return cls(
            seed=seed, data=DataConfig(seed=seed, num_train=120, num_test_per_family=6),
            clip=StageConfig(steps=4, lr=1e-3, batch=32, warmup=2, weight_decay=0.1),
            align=StageConfig(steps=4, lr=1e-3, batch=1024, warmup=2),
            instruct=StageConfig(steps=8, lr=5e-4, batch=1024, warmup=2),
            eval_limit=4,
        )

    def to_dict(self) -> dict:
        return asdict(self)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _seed_all(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def caption_records(captions: list[dict], seed: int) -> list[dict]:
    """LLaVA records for stage (b): one caption conversation per training image."""
    rng = random.Random(f"{seed}/captions")
    return [{"id": f"cap-{i:06d}", "image": c["image"],
             "conversations": [{"from": "human", "value": "<image>\n" + rng.choice(CAPTION_PROMPTS)},
                               {"from": "gpt", "value": c["caption"][0].upper() + c["caption"][1:]}]}
            for i, c in enumerate(captions)]


def _versions() -> dict:
    import tokenizers
    import transformers

    import dpvr

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            "dpvr": dpvr.__version__, "platform": platform.platform(), "threads": torch.get_num_threads()}


def build(out: str | os.PathLike, cfg: BuildConfig, data_dir: str | os.PathLike | None = None,
          overwrite: bool = False, progress: bool = True, command: list[str] | None = None) -> dict:
    """Run the whole build into ``out``; returns the ``build.json`` content."""
    from transformers import CLIPModel  # noqa: F401  (import cost paid once, before timing)

    from dpvr.tiny import stages

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
    torch.set_num_threads(cfg.threads)
    t_start = time.time()
    timings: dict[str, float] = {}
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "losses.jsonl"
    if logs.exists():
        logs.unlink()

    # 1. data
    t = time.time()
    if data_dir is None:
        data_dir = out / "data"
        if (data_dir / "manifest.json").exists():
            manifest = verify_dataset(data_dir)
            if manifest["config"] != asdict(cfg.data):
                manifest = generate_dataset(data_dir, overwrite=True, progress=progress, **asdict(cfg.data))
        else:
            manifest = generate_dataset(data_dir, overwrite=True, progress=progress, **asdict(cfg.data))
    else:
        manifest = verify_dataset(data_dir)
    data_dir = Path(data_dir)
    timings["data"] = time.time() - t

    # 2. tokenizer + processor
    t = time.time()
    records = json.loads((data_dir / "train.json").read_text())
    captions = [json.loads(line) for line in (data_dir / "captions.jsonl").read_text().splitlines()]
    processor = stages.make_tokenizer_and_processor(records, captions, cfg.arch)
    timings["tokenizer"] = time.time() - t

    # 3. stage (a): CLIP
    t = time.time()
    _seed_all(cfg.seed)
    pixels, row = stages.load_all_pixels(data_dir, captions)
    clip, clip_log = stages.run_clip(cfg, processor.tokenizer, pixels, captions, logs, progress)
    timings["clip"] = time.time() - t

    # 4. LLaVA with the pretrained tower; cached features
    t = time.time()
    model = stages.new_llava(cfg, len(processor.tokenizer), clip)
    del clip
    features = stages.cache(model, pixels, progress)
    del pixels
    timings["cache"] = time.time() - t

    # 5. stage (b): align on captions; 6. stage (c): instruction tuning
    t = time.time()
    cap_recs = caption_records(captions, cfg.seed)
    align_log = stages.run_lm(model, features, cap_recs, row, processor.tokenizer, cfg, "align", logs, progress)
    timings["align"] = time.time() - t
    t = time.time()
    inst_log = stages.run_lm(model, features, records, row, processor.tokenizer, cfg, "instruct", logs, progress)
    timings["instruct"] = time.time() - t

    # 7. save, evaluate with the stock classes reloaded from disk
    t = time.time()
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    model.generation_config.do_sample = False
    model.save_pretrained(out)
    processor.save_pretrained(out)
    reloaded, reproc = stages.reload(out)
    results = stages.evaluate_both(reloaded, reproc, data_dir, cfg.eval_limit, progress)
    timings["eval"] = time.time() - t

    from dpvr.tiny.plots import plot_losses

    plot_losses(logs, out / "losses.png")
    files = {name: _sha256(out / name) for name in sorted(os.listdir(out))
             if (out / name).is_file() and name not in ("build.json",)}
    info = {
        "command": command if command is not None else [os.path.basename(sys.argv[0])] + sys.argv[1:],
        "seed": cfg.seed,
        "config": cfg.to_dict(),
        "versions": _versions(),
        "data": {"dir": str(data_dir), "manifest_sha256": _sha256(data_dir / "manifest.json"),
                 "counts": manifest["counts"]},
        "num_image_tokens": cfg.arch.num_image_tokens,
        "parameters": sum(p.numel() for p in reloaded.parameters()),
        "stages": {"clip": _summary(clip_log), "align": _summary(align_log), "instruct": _summary(inst_log)},
        "results": results,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "wall_time_s": round(time.time() - t_start, 1),
        "files": files,
    }
    tmp = out / ".build.json.tmp"
    tmp.write_text(json.dumps(info, indent=1) + "\n")
    os.replace(tmp, out / "build.json")
    return info


def _summary(rows: list[dict]) -> dict:
    if not rows:
        return {}
    tail = rows[-20:]
    s = {"steps": len(rows), "seconds": round(rows[-1]["t"], 1),
         "final_loss": round(sum(r["loss"] for r in tail) / len(tail), 4)}
    if "acc" in rows[-1]:
        s["final_in_batch_acc"] = round(sum(r["acc"] for r in tail) / len(tail), 4)
    return s
