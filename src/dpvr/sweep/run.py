"""Run a sweep: every point trained with `dpvr.train.train` and evaluated, one folder per point.

Layout::

    OUT/sweep.json                 the settings of the sweep
    OUT/points/<name>/train/       the point's training output (adapter, loss curve, result)
    OUT/points/<name>/point.json   written last: settings, accuracy per family, loss, FLOPs saving
    OUT/vanilla.json               the base model's accuracy with the same evaluation (reference)
    OUT/teacher-targets/           the unrouted base's targets, shared by the points with distill=on
    OUT/table.{json,csv,md}, OUT/*.png   the aggregate (dpvr.sweep.report)

A point is finished when its ``point.json`` exists with the same grid values and recipe (steps,
batch size, data, model, evaluation): it is never retrained,
so an interrupted sweep resumes where it stopped. A point in progress holds its lock
(``points/.<name>.lock``, an ``flock`` through ``dpvr.outlock``); other processes writing to the same
folder skip it. The kernel drops the lock when its process dies, so a killed run's point is taken
over by the next process atomically, whatever the lock file holds (empty, garbage, a dead PID). ``shard=(i, n)`` gives process i every n-th point, e.g. one process per GPU.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from dpvr.io import write_json_atomic
from dpvr.outlock import acquire, check_out
from dpvr.sweep.grid import Point

POINT_FILE = "point.json"
REFERENCE_FILE = "vanilla.json"


@dataclass
class SweepSettings:
    out: str
    model: str | None = None
    data: str | None = None
    image_folder: str | None = None
    benchmark: str | None = None
    families: list[str] | None = None
    eval_limit: int | None = 50  # questions per family
    split: int | None = None  # when the grid has no split axis
    max_steps: int = 200
    batch_size: int = 8
    lr: float | None = None  # when the grid has no lr axis (None: the variant's default)
    max_samples: int | None = None
    eval_batch_size: int = 32
    shard: tuple[int, int] = (0, 1)
    extra: dict = field(default_factory=dict)


def point_record(folder: Path) -> dict | None:
    path = folder / POINT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _final_loss(loss_jsonl: Path, last: int = 50) -> float | None:
    rows = [json.loads(line) for line in loss_jsonl.read_text().splitlines() if line.strip()] if loss_jsonl.is_file() else []
    losses = [r["loss"] for r in rows if r.get("stage") == "train"][-last:]
    return sum(losses) / len(losses) if losses else None


def _model_dir(settings: SweepSettings) -> str:
    """The base model folder: ``settings.model`` or the embedded checkpoint."""
    if settings.model is not None:
        return settings.model
    from dpvr import embedded

    return str(embedded.checkpoint_path())


def _weights_stamp(settings: SweepSettings) -> str | None:
    """sha256 prefix of the model's weights file, so a rebuilt base model is not mistaken for the old one."""
    import hashlib

    path = Path(_model_dir(settings)) / "model.safetensors"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None


def recipe(settings: SweepSettings) -> dict:
    """What a point's result depends on besides its grid values (a finished point is reused only if equal)."""
    out = {k: v for k, v in asdict(settings).items() if k not in ("out", "shard", "eval_batch_size")}
    return out | {"weights_sha256": _weights_stamp(settings)}


def run_point(point: Point, settings: SweepSettings, folder: Path, evaluate_fn, point_recipe: dict | None = None) -> dict:
    """Train and evaluate one point; returns (and writes, last) its record.

    ``point_recipe``: :func:`recipe` of ``settings`` when the caller has it (it hashes the weights).
    """
    from dpvr.train import TrainArgs, train
    from transformers import AutoConfig

    from dpvr.train.run import default_split

    values = point.values
    train_dir = folder / "train"
    if train_dir.exists():  # left by an interrupted run: start the point again
        shutil.rmtree(train_dir)
    model_dir = _model_dir(settings)
    model_config = AutoConfig.from_pretrained(model_dir)
    num_layers = model_config.get_text_config().num_hidden_layers
    split = values.get("split", settings.split if settings.split is not None else default_split(num_layers))
    fusion = point.resolved_fusion_layers(num_layers) if "fusion_layers" in values else None
    args = TrainArgs(
        out=str(train_dir), model=model_dir, data=settings.data, image_folder=settings.image_folder, method="dpvr",
        variant=point.variant, split=split, fusion_layers=fusion,
        num_fusion_layers=values.get("num_fusion_layers") if fusion is None and point.variant == "lf" else None,
        side_depth=values.get("side_depth", 1), lr=values.get("lr", settings.lr), seed=point.seed,
        max_steps=settings.max_steps, batch_size=settings.batch_size, max_samples=settings.max_samples,
        progress=False, **_recipe_axes(values, settings),
    )
    summary = train(args)
    accuracy = evaluate_fn(model_dir, train_dir / "adapter", settings)
    record = {
        "name": point.name,
        "group": point.group,
        "variant": point.variant,
        "seed": point.seed,
        "settings": {k: v for k, v in values.items()},
        "recipe": point_recipe if point_recipe is not None else recipe(settings),
        "dpvr_config": summary["dpvr_config"],
        "trainable_parameters": summary["trainable_parameters"],
        "final_train_loss": _final_loss(train_dir / "loss.jsonl"),
        "eval_loss_before": summary["eval_loss_before"],
        "eval_loss_after": summary["eval_loss_after"],
        "train_seconds": summary["wall_seconds"],
        "accuracy": accuracy,
        "flops_saving": flops_saving(model_config, summary["dpvr_config"], settings),
    }
    write_json_atomic(folder / POINT_FILE, record)
    return record


def _recipe_axes(values: dict, settings: SweepSettings) -> dict:
    """TrainArgs from the recipe axes of a point (warmup, distillation); distilled points share one target cache."""
    kw = {k: values[k] for k in ("warmup_ratio",) if k in values}
    if values.get("distill"):
        kw |= {k: values[k] for k in ("distill_kl_weight", "distill_feature_weight") if k in values}
        kw |= {"distill": True, "distill_cache": str(Path(settings.out) / "teacher-targets")}
    return kw


def _training_image_size(settings: SweepSettings) -> tuple[int, int] | None:
    """(height, width) of the first image of the sweep's training data, or None if it has none."""
    from PIL import Image

    from dpvr.train.run import TrainArgs, resolve_inputs

    _, data, folder = resolve_inputs(TrainArgs(out=settings.out, model=settings.model, data=settings.data,
                                               image_folder=settings.image_folder))
    records = json.loads(Path(data).read_text()) if str(data).endswith(".json") else []
    for rec in records if isinstance(records, list) else []:
        if isinstance(rec, dict) and isinstance(rec.get("image"), str) and (Path(folder) / rec["image"]).is_file():
            with Image.open(Path(folder) / rec["image"]) as im:
                return im.height, im.width
    return None


def flops_saving(model_config, dpvr_config: dict, settings: SweepSettings, text_tokens: int = 24,
                 system_tokens: int = 8) -> float:
    """Analytic LM prefill saving against vanilla at the sweep's prompt shape: one image of the training data's
    size, counted by the family's rule (`dpvr.shapes.layout`; a fixed grid for LLaVA-1.5, the image's size for
    the dynamic-resolution families, whose vision config names no image size)."""
    from dpvr.config import DPVRConfig
    from dpvr.efficiency.flops import ShapeDims, compare
    from dpvr.efficiency.methods import Method

    from dpvr.shapes.layout import Visual, prompt_layout

    layout = None
    size = _training_image_size(settings)
    if size is not None:
        meta = getattr(model_config, "_dpvr_shape", None) or {}
        if "layouts" not in meta:  # a checkpoint, not a bundled shape: its default layout is this image
            model_config._dpvr_shape = {**meta, "layouts": {"image": [{"kind": "image", "height": size[0],
                                                                       "width": size[1]}]}}
        layout = prompt_layout(model_config, visuals=[Visual("image", size[0], size[1])])
        layout = dataclasses.replace(layout, visuals=(), units=())  # the LM's saving needs no vision-tower FLOPs
    cfg = DPVRConfig.from_dict(dpvr_config)
    methods = [Method("vanilla", DPVRConfig(variant="vanilla")), Method(cfg.variant, cfg)]
    rows = compare(ShapeDims.from_config(model_config, layout), methods, text_tokens=[text_tokens],
                   system_tokens=system_tokens)
    return rows[-1]["saving_lm"]


def run_sweep(points: list[Point], settings: SweepSettings, evaluate_fn=None, progress: bool = True) -> list[dict]:
    """Run (this shard's share of) ``points``; returns the records of every finished point."""
    out = Path(settings.out)
    check_out(out)  # a file, or not writable: one line before any work
    out.mkdir(parents=True, exist_ok=True)
    if evaluate_fn is None:
        from dpvr.sweep.evaluate import accuracy_of_adapter as evaluate_fn
    write_json_atomic(out / "sweep.json", {"settings": asdict(settings), "points": [p.name for p in points]})
    index, count = settings.shard
    mine = [p for i, p in enumerate(points) if i % count == index]
    bar = tqdm(mine, desc="sweep", unit="point", disable=not progress)
    want = recipe(settings)
    for point in bar:
        folder = out / "points" / point.name
        done = point_record(folder)
        bar.set_postfix_str(point.name)
        if done is not None and done.get("settings") == point.values and done.get("recipe") == want:
            continue
        lock = acquire(folder)
        if lock is None:
            continue  # another live process is on it
        try:
            done = point_record(folder)  # finished by another process between the check and the lock?
            if done is not None and done.get("settings") == point.values and done.get("recipe") == want:
                continue
            run_point(point, settings, folder, evaluate_fn, want)
        finally:
            lock.release()
    return [r for p in points if (r := point_record(out / "points" / p.name)) is not None
            and r.get("settings") == p.values and r.get("recipe") == want]


def _eval_settings(settings: SweepSettings) -> dict:
    return {"model": settings.model, "benchmark": settings.benchmark, "families": settings.families,
            "eval_limit": settings.eval_limit, "weights_sha256": _weights_stamp(settings)}


def reference_accuracy(settings: SweepSettings, evaluate_fn=None) -> dict:
    """Accuracy of the unwrapped base model under the sweep's evaluation settings (OUT/vanilla.json).

    Computed once and reused while the evaluation settings and base weights are unchanged; every table and plot
    of the sweep shows it as the line the trained points are compared with.
    """
    path = Path(settings.out) / REFERENCE_FILE
    wanted = _eval_settings(settings)
    if path.is_file():
        done = json.loads(path.read_text())
        if done.get("settings") == wanted:
            return done["accuracy"]
    if evaluate_fn is None:
        from dpvr.sweep.evaluate import accuracy_of_base as evaluate_fn
    accuracy = evaluate_fn(_model_dir(settings), settings)
    write_json_atomic(path, {"settings": wanted, "accuracy": accuracy})
    return accuracy
