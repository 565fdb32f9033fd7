"""``dpvr tiny build``: data -> tokenizer -> (a) CLIP -> (b) align -> (c) instruct -> (d) focus -> eval -> checkpoint.

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

The build is written into a hidden staging folder beside ``<out>`` (``.<name>.tmp-<pid>-...``) and
swapped in whole at the end (``dpvr.io.swap_in``): ``<out>`` is always the previous complete build
or the new complete one, even if the build is killed (the next build removes the leftover).
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
from dpvr.io import make_temp_dir, recover, swap_in, write_text_atomic
from dpvr.data.questions import CAPTION_PROMPTS, FAMILIES
from dpvr.tiny.focus import focus_records
from dpvr.tiny.gates import Gate, GateError, describe, failing
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
    vision_lr_scale: float = 0.0  # LM stages: > 0 trains the vision tower too, at this fraction of lr


@dataclass(frozen=True)
class FocusStage:
    """A stage of (d), the focus curriculum after the mixed instruction tuning: single-question records
    built from ``train.json``'s own conversations, only those of ``families`` (see :func:`focus_records`).

    ``gate``: the benchmark families this stage is for. A gated stage is skipped when they already
    clear the validation gate, and stops early once they clear it with room (``BuildConfig.stop_margin``);
    an ungated stage (the replay) always runs in full.
    """

    name: str
    families: tuple[str, ...]
    stage: StageConfig
    gate: tuple[str, ...] = ()


#: Stage (d) of ``dpvr tiny build`` (``--no-focus`` leaves it out), run in rounds. A small model learns
#: the families it reads early (count, colour, digit) from the mixed data and stays at chance on the
#: rest; a stage on one family alone gets it off that plateau — on some numerical paths and not
#: others (generator 5: the one-thread seed-0 build escaped for POPE, spatial and multiple choice, the
#: same recipe on two threads escaped for none; generator 6 behind the gates: both passed, each in its
#: third round). So each round runs the single-family stages whose family is still below the
#: validation gate, then the replay of every family and the conversations
#: at a lower rate (it keeps what stage (c) taught: captions, multi-turn answers), then checks every
#: family; the build ends when all clear and fails, naming the families, after
#: ``BuildConfig.focus_rounds`` rounds. The text-only multiple-choice scaffold ("The answer is red.
#: What color is the circle? A. ... -> B") is what makes multiple choice move at all. A stage's
#: batches are drawn from ``Random(f"{seed}/{name}")`` (round k > 1: ``r{k}_{name}``).
_REPLAYED = FAMILIES + ("digit_color", "conversations")  # every family + train.json's conversations
FOCUS_CURRICULUM: tuple[FocusStage, ...] = (
    FocusStage("focus_pope", ("pope",), StageConfig(steps=400, lr=1e-3, batch=2048, warmup=30), gate=("pope",)),
    FocusStage("focus_spatial", ("spatial",), StageConfig(steps=700, lr=1e-3, batch=2048, warmup=30),
               gate=("spatial",)),
    FocusStage("focus_mc_text", ("mc_text",), StageConfig(steps=300, lr=1e-3, batch=2048, warmup=30), gate=("mc",)),
    FocusStage("focus_mc", ("mc", "mc_text"), StageConfig(steps=600, lr=1e-3, batch=2048, warmup=30), gate=("mc",)),
    FocusStage("focus_all", _REPLAYED, StageConfig(steps=800, lr=3e-4, batch=2048, warmup=30)),
)


@dataclass(frozen=True)
class BuildConfig:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    arch: TinyArch = field(default_factory=TinyArch)
    clip: StageConfig = StageConfig(steps=1000, lr=1e-3, batch=64, warmup=30, weight_decay=0.1)
    align: StageConfig = StageConfig(steps=800, lr=1e-3, batch=2048, warmup=30, vision_lr_scale=1.0)
    instruct: StageConfig = StageConfig(steps=1400, lr=1e-3, batch=2048, warmup=50, vision_lr_scale=0.3)
    focus: tuple[FocusStage, ...] = ()  # stage (d); empty: no focus stage (see FOCUS_CURRICULUM)
    focus_rounds: int = 3  # rounds of stage (d) at most before the build fails
    gate_items: int = 100  # validation items per family a gate scores (and as many blank-image ones)
    gate_margin: float = 15.0  # points above blind every family must reach for the build to pass
    stop_margin: float = 25.0  # points above blind at which a gated stage stops early
    gate_every: int = 100  # steps between a gated stage's checks
    eval_limit: int | None = None  # items per family (None: all)
    blind_eval_limit: int | None = 120  # items per family for the blank-image run
    threads: int = 2  # the shipped build's, both cores of the project machine (docs/embedded.md); another count is
    # another numerical path (the one-thread build passes its gates too, on its own path)

    @classmethod
    def full(cls, seed: int = 0, focus: bool = True) -> "BuildConfig":
        """The shipped recipe; ``focus=False`` leaves out stage (d), :data:`FOCUS_CURRICULUM`."""
        return cls(seed=seed, data=DataConfig(seed=seed), focus=FOCUS_CURRICULUM if focus else ())

    @classmethod
    def quick(cls, seed: int = 0, focus: bool = True) -> "BuildConfig":
        """A ~1-minute smoke version (tests): tiny data, few steps, small eval."""
        focus_stages = (FocusStage("focus_pope", ("pope",), StageConfig(steps=3, lr=5e-4, batch=1024, warmup=1),
                                   gate=("pope",)),
                        FocusStage("focus_all", FAMILIES + ("mc_text", "conversations"),
                                   StageConfig(steps=3, lr=2e-4, batch=1024, warmup=1)))
        return cls(
            seed=seed, data=DataConfig(seed=seed, num_train=120, num_test_per_family=6),
            clip=StageConfig(steps=4, lr=1e-3, batch=32, warmup=2, weight_decay=0.1),
            align=StageConfig(steps=4, lr=1e-3, batch=1024, warmup=2),
            instruct=StageConfig(steps=8, lr=5e-4, batch=1024, warmup=2, vision_lr_scale=0.3),
            focus=focus_stages if focus else (), focus_rounds=1, gate_items=6, gate_margin=-100.0,
            gate_every=2, eval_limit=4, blind_eval_limit=4,
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
    """Run the whole build into ``out``; returns the ``build.json`` content (written last: the build is
    complete when it exists). Holds ``out``'s lock: a second build into the same folder is refused.

    The build goes to a staging folder beside ``out`` that replaces ``out`` as a whole once complete.
    """
    from dpvr.outlock import output_lock

    with output_lock(out):
        out = Path(out)
        recover(out)  # a killed build's staging folder (or a swap cut half-way) from an earlier run
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
        staging = make_temp_dir(out.parent, f".{out.name}.tmp-")
        try:
            info = _build(staging, out, cfg, data_dir, progress, command)
            swap_in(staging, out)
        except GateError as err:
            # ``out`` keeps the previous build; the failed one's logs (gates.jsonl, losses) are kept beside it
            kept = out.with_name(f"{out.name}.failed-logs")
            shutil.rmtree(kept, ignore_errors=True)
            if (staging / "logs").is_dir():
                shutil.copytree(staging / "logs", kept)
            raise GateError(f"{err}; its logs: {kept}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone after a swap; a failed build's files otherwise
        return info


def _given_data(data_dir, staging: Path, out: Path) -> tuple[Path, Path]:
    """(folder to read the data from, its path as recorded in build.json). Data inside ``out`` is copied
    into the staging folder, since ``out`` is replaced as a whole."""
    data_dir = Path(data_dir)
    try:
        rel = data_dir.resolve().relative_to(out.resolve())
    except ValueError:
        return data_dir, data_dir
    shutil.copytree(data_dir, staging / rel)
    return staging / rel, out / rel


def _build(out: Path, final: Path, cfg: BuildConfig, data_dir, progress: bool, command) -> dict:
    """The build written into the (empty) staging folder ``out``; ``final`` is where it will be."""
    from transformers import CLIPModel  # noqa: F401  (import cost paid once, before timing)

    from dpvr.tiny import stages

    torch.set_num_threads(cfg.threads)
    t_start = time.time()
    timings: dict[str, float] = {}
    logs = out / "logs" / "losses.jsonl"

    # 1. data: the previous build's (copied, if made with the same settings) or new
    t = time.time()
    if data_dir is None:
        data_dir, recorded_data = out / "data", final / "data"
        if (final / "data" / "manifest.json").exists():
            manifest = verify_dataset(final / "data")
            if manifest["config"] == asdict(cfg.data):
                shutil.copytree(final / "data", data_dir)
            else:
                manifest = generate_dataset(data_dir, overwrite=True, progress=progress, **asdict(cfg.data))
        else:
            manifest = generate_dataset(data_dir, overwrite=True, progress=progress, **asdict(cfg.data))
    else:
        data_dir, recorded_data = _given_data(data_dir, out, final)
        manifest = verify_dataset(data_dir)
        # build.json's config must describe the data trained on (benchmark_dir regenerates from it)
        try:
            cfg = replace(cfg, data=DataConfig(**manifest["config"]))
        except TypeError as err:
            raise ValueError(f"{data_dir} was written by data generator version {manifest.get('generator_version')}, "
                             f"whose settings this dpvr does not know ({err}); regenerate it with "
                             "`dpvr data generate` or leave out --data") from None
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

    # 4. LLaVA with the pretrained tower (generation settings first: the gates generate)
    model = stages.new_llava(cfg, len(processor.tokenizer), clip)
    del clip
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    model.generation_config.do_sample = False

    # 5. stage (b): align on captions; 6. stage (c): instruction tuning. A stage with a frozen tower
    # trains on cached features (computed from the tower as it is when the stage starts).
    run = _StageRunner(model, pixels, row, processor.tokenizer, cfg, logs, progress, timings)
    run("align", cfg.align, caption_records(captions, cfg.seed))
    run("instruct", cfg.instruct, records)

    # 7. stage (d): focus curriculum in rounds, each family checked on held-out validation items
    gate_log: list[dict] = []
    if cfg.focus:
        t = time.time()
        val_dir = out / "work" / "val"
        generate_dataset(val_dir, progress=False, **asdict(replace(cfg.data, seed=cfg.data.seed + VAL_SEED_OFFSET,
                                                                   num_train=1, num_test_per_family=cfg.gate_items)))
        gate = Gate(processor, val_dir, items=cfg.gate_items, margin=cfg.gate_margin)
        timings["validation_data"] = time.time() - t
        _focus_rounds(run, gate, cfg, records, gate_log, progress, out / "logs" / "gates.jsonl")
    del pixels, run.pixels, run.features

    # 8. save, evaluate with the stock classes reloaded from disk
    t = time.time()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    reloaded, reproc = stages.reload(out)
    predictions: list[dict] = []
    results = stages.evaluate_both(reloaded, reproc, data_dir, cfg.eval_limit, progress, predictions,
                                   blind_limit=cfg.blind_eval_limit)
    (out / "logs" / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in predictions))
    stages.write_examples(out, data_dir, predictions)
    timings["eval"] = time.time() - t

    from dpvr.tiny.plots import plot_losses

    plot_losses(logs, out / "logs" / "losses.png")
    files = {p.relative_to(out).as_posix(): _sha256(p) for p in sorted(out.rglob("*"))
             if p.is_file() and p.name != "build.json" and not p.name.startswith(".")
             and p.relative_to(out).parts[0] not in ("data", "work", "logs")}
    info = {
        "command": command if command is not None else [os.path.basename(sys.argv[0])] + sys.argv[1:],
        "seed": cfg.seed,
        "config": cfg.to_dict(),
        "versions": _versions(),
        "data": {"dir": str(recorded_data), "manifest_sha256": _sha256(data_dir / "manifest.json"),
                 "counts": manifest["counts"]},
        "num_image_tokens": cfg.arch.num_image_tokens,
        "parameters": sum(p.numel() for p in reloaded.parameters()),
        "stages": {"clip": _summary(clip_log), **{st: _summary(rows) for st, rows in run.logs.items()}},
        "gates": gate_log,
        "results": results,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "wall_time_s": round(time.time() - t_start, 1),
        "files": files,
    }
    write_text_atomic(out / "build.json", json.dumps(info, indent=1) + "\n")
    return info


VAL_SEED_OFFSET = 1_000_003  # the validation benchmark's seed: the data seed + this (never the test files)


class _StageRunner:
    """Runs LM stages on one model, keeping the vision-feature cache, the timings and the loss logs."""

    def __init__(self, model, pixels, row, tokenizer, cfg, log_path, progress, timings):
        from dpvr.tiny import stages

        self.stages, self.model, self.pixels, self.row, self.tok = stages, model, pixels, row, tokenizer
        self.cfg, self.log_path, self.progress, self.timings = cfg, log_path, progress, timings
        self.features = None
        self.logs: dict[str, list[dict]] = {}

    def __call__(self, name: str, stage_cfg: StageConfig, records: list[dict], eval_fn=None, stop_when=None) -> None:
        frozen = stage_cfg.vision_lr_scale == 0
        if frozen and self.features is None:
            t = time.time()
            self.features = self.stages.cache(self.model, self.pixels, self.progress)
            self.timings[f"cache_{name}"] = time.time() - t
        t = time.time()
        self.logs[name] = self.stages.run_lm(
            self.model, self.features if frozen else self.pixels, records, self.row, self.tok, self.cfg, name,
            stage_cfg, self.log_path, self.progress, eval_fn=eval_fn, eval_every=self.cfg.gate_every,
            stop_when=stop_when)
        if not frozen:
            self.features = None  # the tower changed: a later frozen stage re-caches
        self.timings[name] = time.time() - t


def _focus_rounds(run: _StageRunner, gate, cfg: BuildConfig, records: list[dict], gate_log: list[dict],
                  progress: bool, log_path: Path | None = None) -> None:
    """Stage (d) in rounds (see :data:`FOCUS_CURRICULUM`); raises :class:`GateError` if a family never clears.

    Every check is appended to ``gate_log`` and, as it happens, to ``log_path`` (one JSON line each)."""
    from tqdm.auto import tqdm

    def check(name: str, families, when: str, step: int | None = None, margin: float | None = None) -> dict:
        t = time.time()
        status = gate.check(run.model, families, margin=margin)
        run.timings["gates"] = run.timings.get("gates", 0.0) + time.time() - t
        entry = {"stage": name, "when": when, **({"step": step} if step is not None else {}), **status}
        gate_log.append(entry)
        if log_path is not None:
            with open(log_path, "a") as f:
                f.write(json.dumps(entry) + "\n")
        if progress:
            tqdm.write(f"[gate {name}{f' step {step}' if step is not None else ''}] {describe(status)}")
        return status

    status = check("instruct", FAMILIES, "end")
    for k in range(1, cfg.focus_rounds + 1):
        for f in cfg.focus:
            name = f.name if k == 1 else f"r{k}_{f.name}"
            if f.gate and k > 1 and not set(f.gate) & set(failing(status)):
                continue  # its families clear: nothing to focus on
            stop_when = eval_fn = None
            if f.gate:
                steps_done = [0]

                def eval_fn(model, f=f, name=name, steps_done=steps_done):
                    steps_done[0] += cfg.gate_every
                    return {"gate_passed": check(name, f.gate, "during", steps_done[0], cfg.stop_margin)["passed"]}

                def stop_when(row):
                    return bool(row.get("gate_passed"))
            run(name, f.stage, focus_records(records, f.families), eval_fn=eval_fn, stop_when=stop_when)
        status = check(f"round {k}", FAMILIES, "end")
        if status["passed"]:
            return
    stuck = failing(status)
    stages_for = [f.name for f in cfg.focus if set(f.gate) & set(stuck)] or ["instruct"]
    raise GateError(f"the build failed its validation gate after {cfg.focus_rounds} focus round(s): "
                    f"{describe({**status, 'families': {f: status['families'][f] for f in stuck}})} — less than "
                    f"{cfg.gate_margin:g} points above blind (stages for them: {', '.join(stages_for)}); rerun with "
                    "another --seed or --threads")


def _summary(rows: list[dict]) -> dict:
    if not rows:
        return {}
    tail = rows[-20:]
    s = {"steps": len(rows), "seconds": round(rows[-1]["t"], 1),
         "final_loss": round(sum(r["loss"] for r in tail) / len(tail), 4)}
    if "acc" in rows[-1]:
        s["final_in_batch_acc"] = round(sum(r["acc"] for r in tail) / len(tail), 4)
    return s


def export_checkpoint(build_dir: str | os.PathLike, dest: str | os.PathLike) -> list[str]:
    """Copy a build's shipped files (those listed in its ``build.json``) + ``build.json`` to ``dest``.

    Checks every file's sha256 first; replaces ``dest`` atomically. Returns the copied names.
    """
    src = Path(build_dir)
    info_path = src / "build.json"
    if not info_path.exists():
        raise FileNotFoundError(f"{info_path} not found: not the output of `dpvr tiny build`")
    info = json.loads(info_path.read_text())
    for name, h in info["files"].items():
        if _sha256(src / name) != h:
            raise ValueError(f"{src / name} does not match its sha256 in build.json")
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for name in list(info["files"]) + ["build.json"]:
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / name, tmp / name)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return sorted(info["files"]) + ["build.json"]
