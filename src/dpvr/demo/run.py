"""`run_demo`: the whole study on the embedded default, through the same functions as the CLI.

1. saturation analysis of the model -> suggested split (`dpvr.analysis.run_analysis`);
2. DPVR-LF at that split, DPVR-PC, DPVR-KV and a LoRA baseline, same data and seed (`dpvr.train.train`);
3. vanilla, the trained variants, FastV, VTW and LF+FastV on the benchmark, plus vanilla with blank
   images (`dpvr.evaluation.run_eval`);
4. analytic FLOPs of every method at the model's shape and at LLaVA-1.5-7B's, and measured prefill /
   decode latency at the model's shape (`dpvr.efficiency`);
5. ``report.html`` (self-contained) and ``report.json`` (`dpvr.demo.report`).

Each stage is skipped when its output exists with the same settings (`dpvr.demo.stages`).
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from dpvr.demo.stages import STAGE_FILE, run_stage, settings_hash
from dpvr.progress import hf_bars

TRAINED = ("lf", "pc", "kv", "lora16")
DEMO_METHODS = ("vanilla", "lf", "pc", "kv", "lora16", "fastv-50", "fastv-25", "vtw@s", "vtw@late", "lf+fastv-50")


@dataclass
class DemoSettings:
    out: str = "runs/demo"
    quick: bool = False
    model: str | None = None  # default: the embedded tiny LLaVA
    data: str | None = None  # default: the embedded train.json
    benchmark: str | None = None  # default: the embedded benchmark
    seed: int = 0
    analysis_samples: int = 64
    train_steps: int = 300
    batch_size: int = 8
    eval_limit: int | None = 100  # questions per family
    families: list[str] | None = None  # benchmark families (None: all)
    latency_repeats: int = 5
    fastv_k: int = 2
    progress: bool = True  # progress bars (dpvr demo --quiet: False)
    inject_load: int = 0  # busy threads during the latency measurement (dpvr.efficiency.load), for the warning

    @classmethod
    def for_mode(cls, quick: bool, **kw) -> "DemoSettings":
        if quick:
            base = dict(analysis_samples=8, train_steps=6, eval_limit=6, latency_repeats=5)
            return cls(quick=True, **(base | kw))
        return cls(**kw)


def _resolve(s: DemoSettings) -> tuple[str, str, str]:
    from dpvr import embedded

    model = s.model or str(embedded.checkpoint_path())
    bench = s.benchmark or (str(Path(s.data).parent) if s.data else str(embedded.benchmark_dir(progress=s.progress)))
    data = s.data or str(Path(bench) / "train.json")
    return model, data, bench


def run_demo(s: DemoSettings, log=print) -> dict:
    """Run (or reuse) every stage and write the report; returns report.json's dict.

    Holds ``s.out``'s lock: a second demo into the same folder is refused (each stage also locks its own).
    """
    from dpvr.outlock import output_lock

    with output_lock(s.out):
        return _run_demo(s, log)


def _run_demo(s: DemoSettings, log) -> dict:
    from dpvr.demo.timing import Estimator

    out = Path(s.out)
    model, data, bench = _resolve(s)
    common = {"model": model, "data": data, "benchmark": bench, "seed": s.seed}
    timings: dict = {}
    plan = _plan(s, bench)
    est = Estimator(plan)
    log(est.header({name for name, folder in _folders(out).items() if (folder / STAGE_FILE).is_file()}))
    started = time.perf_counter()
    with hf_bars(False):  # transformers' weight-loading bars: instant, and noise between the stage bars
        return _run(s, out, model, data, bench, common, timings, est, started, log)


def _run(s, out, model, data, bench, common, timings, est, started, log) -> dict:
    from dpvr.demo.report import write_report
    from dpvr.demo.timing import duration

    def stage(name: str, folder: Path, settings: dict, fn):
        result = run_stage(name, folder, settings, fn, log, timings)
        est.finish(name, timings[name]["seconds"], timings[name]["reused"])
        left = est.remaining()
        if left > 0:
            scale = f" (estimates x{est.speed:.2f} from this run's stages)" if est.measured else ""
            log(f"  about {duration(left)} left{scale}")
        return result

    analysis = stage("analyze", out / "analyze", common | {"samples": s.analysis_samples},
                     lambda: _analyze(model, data, out / "analyze", s))
    split = analysis["suggested_split"]

    training = {}
    for name in TRAINED:
        settings = common | {"method": name, "split": split, "steps": s.train_steps, "batch_size": s.batch_size}
        folder = out / "train" / name
        training[name] = stage(f"train {name}", folder, settings,
                               lambda name=name, folder=folder, settings=settings:
                               _train(name, model, data, split, folder, s, settings_hash(settings), log))

    methods = _eval_methods(out, split, s.fastv_k, model)
    evaluation = stage("evaluate", out / "eval", common | {"methods": methods, "limit": s.eval_limit,
                                                           "families": s.families,
                                                           "trained": {k: v["summary"]["wall_seconds"] for k, v in training.items()}},
                       lambda: _evaluate(methods, model, bench, out / "eval", s))

    efficiency = stage("efficiency", out / "efficiency", common | {"split": split, "repeats": s.latency_repeats,
                                                                   "fastv_k": s.fastv_k}
                       | ({"inject_load": s.inject_load} if s.inject_load else {}),
                       lambda: _efficiency(model, split, out / "efficiency", s))

    context = {
        "settings": asdict(s) | {"model": model, "data": data, "benchmark": bench},
        "command": " ".join(["dpvr"] + sys.argv[1:]) if sys.argv and sys.argv[0].endswith("dpvr") else "dpvr demo",
        "versions": _versions(),
        "split": split,
        "timings": {"stages": timings, "this_run_seconds": time.perf_counter() - started,
                    "estimated_seconds": est.base, "estimates_measured_on": _measured_on()},
    }
    return write_report(out, context, analysis, training, evaluation, efficiency)


def _measured_on() -> str:
    from dpvr.demo.timing import MEASURED_ON

    return MEASURED_ON


def _folders(out: Path) -> dict[str, Path]:
    return {"analyze": out / "analyze", **{f"train {n}": out / "train" / n for n in TRAINED},
            "evaluate": out / "eval", "efficiency": out / "efficiency"}


def _plan(s: DemoSettings, bench: str) -> dict[str, float]:
    """Each stage's amount of work, in the units of `dpvr.demo.timing.MEASURED`."""
    families = len(s.families) if s.families else max(1, len(list(Path(bench).glob("*.jsonl"))))
    questions = (len(DEMO_METHODS) + 1) * families * (s.eval_limit or 300)  # + vanilla with blank images
    runs = 5 * (2 + s.latency_repeats) * (1 if s.quick else 2)  # vanilla + 4 variants, warm-up + timed, batches
    return {"analyze": s.analysis_samples, **{f"train {n}": s.train_steps for n in TRAINED},
            "evaluate": questions, "efficiency": runs}


# ----------------------------------------------------------------------------- stages
def _analyze(model: str, data: str, folder: Path, s: DemoSettings) -> dict:
    from dpvr.analysis.saturate import run_analysis

    result, paths = run_analysis(model, data, str(Path(data).parent), folder, num_samples=s.analysis_samples,
                                 seed=s.seed, progress=s.progress)
    return {"suggested_split": result.suggested_split, "explanation": result.explanation,
            "json": str(paths.get("json", folder / "saturation.json")),
            "png": str(paths.get("png", folder / "saturation.png"))}


def _resume_point(folder: Path, digest: str, log=print) -> str | None:
    """The last complete checkpoint of an interrupted training with the same settings, else None.

    ``checkpoints/demo-settings.json`` ties the checkpoints to the stage's settings: checkpoints of
    other settings are deleted, incomplete ones (no ``trainer_state.json``, written last) skipped.
    """
    from dpvr.io import write_json_atomic

    ckpt = folder / "checkpoints"
    tag = ckpt / "demo-settings.json"
    if ckpt.is_dir():
        same = tag.is_file() and json.loads(tag.read_text()).get("settings_hash") == digest
        if not same:
            shutil.rmtree(ckpt)
        else:
            steps = sorted((int(d.name.split("-")[1]), d) for d in ckpt.glob("checkpoint-*")
                           if d.is_dir() and d.name.split("-")[1].isdigit())
            for step, d in reversed(steps):
                if (d / "trainer_state.json").is_file():
                    log(f"  resuming from {d} (step {step})")
                    return str(d)
    ckpt.mkdir(parents=True, exist_ok=True)
    write_json_atomic(tag, {"settings_hash": digest})
    return None


def _train(name: str, model: str, data: str, split: int, folder: Path, s: DemoSettings, digest: str = "",
           log=print) -> dict:
    from dpvr.train import TrainArgs, train

    if name.startswith("lora"):
        kw = dict(method="lora", lora_r=int(name[4:]))
    else:
        kw = dict(method="dpvr", variant=name, split=split)
    args = TrainArgs(out=str(folder), model=model, data=data, seed=s.seed, max_steps=s.train_steps,
                     batch_size=s.batch_size, logging_steps=max(1, s.train_steps // 50), progress=s.progress,
                     eval_samples=16 if s.quick else 64, save_steps=max(1, s.train_steps // 10),
                     resume=_resume_point(folder, digest, log), **kw)
    summary = train(args)
    return {"summary": summary, "adapter": str(folder / "adapter"), "loss_png": str(folder / "loss.png"),
            "loss_jsonl": str(folder / "loss.jsonl")}


def _eval_methods(out: Path, split: int, fastv_k: int, model: str) -> list[str]:
    from transformers import AutoConfig

    n = AutoConfig.from_pretrained(model).get_text_config().num_hidden_layers
    train = out / "train"
    late = min(n - 1, split + max(1, (n - split) // 2))
    return [
        "vanilla",
        f"lf=adapter:{train / 'lf' / 'adapter'}",
        f"pc=adapter:{train / 'pc' / 'adapter'}",
        f"kv=adapter:{train / 'kv' / 'adapter'}",
        f"lora16=lora:{train / 'lora16' / 'adapter'}",
        f"fastv-50=fastv:k={fastv_k},ratio=0.5",
        f"fastv-25=fastv:k={fastv_k},ratio=0.25",
        f"vtw@{split}=vtw:k={split}",
        f"vtw@{late}=vtw:k={late}",
        f"lf+fastv-50=adapter:{train / 'lf' / 'adapter'},fastv_k={fastv_k},fastv_ratio=0.5",
    ]


def _evaluate(methods: list[str], model: str, bench: str, folder: Path, s: DemoSettings) -> dict:
    from dpvr.evaluation import EvalSettings, run_eval

    settings = EvalSettings(benchmark=bench, families=s.families, limit=s.eval_limit, batch_size=32,
                            max_new_tokens=8, seed=s.seed, progress=s.progress)
    main = run_eval(methods, folder / "methods", model=model, settings=settings)
    blind = run_eval(["vanilla"], folder / "blind", model=model,
                     settings=EvalSettings(**(asdict(settings) | {"blind": "only"})))
    return {"methods": main, "blind": blind}


def _efficiency(model: str, split: int, folder: Path, s: DemoSettings) -> dict:
    from transformers import AutoConfig

    from dpvr.demo.flops import analytic_table
    from dpvr.efficiency.latency import LatencySettings, measure_latency
    from dpvr.efficiency.load import inject_load
    from dpvr.shapes import load_shape_config

    cfg = AutoConfig.from_pretrained(model)
    tiny = analytic_table(cfg, split, s.fastv_k, system_tokens=3, text_tokens=24)
    big = analytic_table(load_shape_config("llava-1.5-7b"), 18, s.fastv_k, system_tokens=35, text_tokens=128)
    # CPU time of this process on one thread: other users' load on a shared machine does not enter the
    # numbers; the spread over the interleaved rounds (dpvr.efficiency.noise) says how far to trust them.
    with inject_load(s.inject_load):
        latency = measure_latency(cfg, ["lf", "pc", "kv", "ideal"], LatencySettings(
            text_tokens=[24], batch_sizes=[1] if s.quick else [1, 8], new_tokens=8, repeats=s.latency_repeats,
            warmup=2, threads=1, clock="process", split=split, system_tokens=3, measure_memory=False),
            progress=s.progress)
    return {"analytic_model": tiny, "analytic_7b": big, "latency": latency}


def _versions() -> dict:
    import torch
    import transformers

    from dpvr import __version__

    return {"dpvr": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "machine": platform.machine()}
