"""Measured prefill latency, cached decode latency, peak memory and KV-cache bytes of every method.

Run it as ``dpvr bench latency --config cpu-mid --threads 2`` or from Python::

    from dpvr.efficiency.latency import LatencySettings, measure_latency
    report = measure_latency("cpu-mid", ["lf", "pc", "kv"], LatencySettings(text_tokens=[64, 128]))

How it measures (SPEC §9):

* one random-weight model of the shape's family (:func:`build_random_model`, no download), seeded; each
  method wraps that same base through ``dpvr.get_dpvr_model`` (the DPVR variants and the peers
  FastV and VTW, which the engine runs as ``DPVRConfig`` variants); vanilla is the unwrapped HF model;
* per (batch size, text length): ``warmup`` untimed rounds, then ``repeats`` rounds; in every round
  each method runs once — prefill, then ``new_tokens`` cached decode steps with a fixed,
  pre-drawn token sequence (the same work for every method) — and the method order rotates from
  round to round, so machine noise hits every method alike;
* timing: CUDA events on a GPU, ``time.perf_counter`` on CPU with a fixed ``torch`` thread count;
* ratios to vanilla are taken within a round (paired) and summarised by their median and
  quartiles, next to the analytic ratios of :mod:`dpvr.efficiency.flops` for the same layout
  (whole model: the measured forward includes the vision tower, projector and last-position lm_head);
* ``compile="both"`` (or ``"compiled"``): each method also runs with its prefill compiled
  (``DPVRModel.compile_prefill``; vanilla as a wrapper calling the base model, compiled the same way),
  labelled ``"<method> [compiled]"``, paired with vanilla compiled and with its eager twin
  (``compiled_over_eager``); two untimed rounds per layout compile every method first, and timed rounds
  in which an entry still compiled are counted (``compiles_while_timed``, flagged by
  :mod:`dpvr.efficiency.noise`);
* peak memory of prefill: :mod:`dpvr.efficiency.memory` (exact allocator peak on GPU, a dispatch-
  level live-tensor tracker on CPU, in a separate untimed pass); KV-cache bytes: the sum of the
  key/value tensors the cache holds after prefill.

Any family of the adapter registry is built and fed (:func:`build_random_model`, :mod:`dpvr.efficiency.inputs`;
the shape's ``layout``: its image or video prompt) and every method runs on it
(``tests/test_bench_families.py``); a method the engine refuses for a shape is reported as skipped, with the
engine's reason.

To add a method, add it to :mod:`dpvr.efficiency.methods` (its analytic schedule) and register a
builder ``(base_model, Method) -> model`` in :data:`MODEL_BUILDERS`; methods without a builder are
reported as skipped, with the reason.
"""

from __future__ import annotations

import os
import statistics
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModelForImageTextToText, PretrainedConfig

from dpvr.efficiency.compiling import compile_room, default_mode, frames_compiled, room_for
from dpvr.efficiency.flops import ShapeDims, compare
from dpvr.efficiency.memory import memory_method, track_peak
from dpvr.efficiency.methods import METHODS, Method, make_methods
from dpvr.efficiency.report import machine_info
from dpvr.shapes import default_split, load_shape_config, shape_name
from dpvr.shapes.layout import prompt_layout

COMPILE_CHOICES = ("eager", "compiled", "both")
COMPILE_ROUNDS = 2  # untimed prefill rounds per layout before the warm-up, when a prefill is compiled
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


# ---------------------------------------------------------------------------------------- models
def build_random_model(config: PretrainedConfig, dtype: torch.dtype = torch.float32,
                       device: str | torch.device = "cpu", attn: str = "sdpa", seed: int = 0) -> torch.nn.Module:
    """A random-weight model of this shape, of its family's class (``AutoModelForImageTextToText`` picks
    it from ``model_type``: LLaVA, LLaVA-NeXT, Qwen2.5-VL, Gemma 3, ...), built directly on ``device`` in
    ``dtype`` (``device="meta"``: shapes only, no memory); nothing downloaded."""
    torch.manual_seed(seed)
    config._attn_implementation = attn
    for name in getattr(config, "sub_configs", {}) or {}:
        sub = getattr(config, name, None)
        if sub is not None:
            sub._attn_implementation = attn
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = AutoModelForImageTextToText.from_config(config)
    finally:
        torch.set_default_dtype(previous)
    return model.to(dtype=dtype).eval().requires_grad_(False)


def _build_dpvr(base: torch.nn.Module, method: Method) -> torch.nn.Module:
    if method.name == "vanilla":
        return base
    try:
        from dpvr import get_dpvr_model
    except ImportError as err:
        raise NotImplementedError(f"the routing engine is not available ({err})") from None
    return get_dpvr_model(base, method.dpvr).eval()


# name -> builder(base_model, method) -> model with the HF call convention (see ModelRunner).
MODEL_BUILDERS: dict[str, Callable[[torch.nn.Module, Method], torch.nn.Module]] = {
    name: _build_dpvr for name in METHODS
}


def cache_nbytes(cache) -> int:
    """Bytes of the key/value tensors a cache holds (``DynamicCache`` layers, or any iterable of tensors)."""
    tensors: list[torch.Tensor] = []

    def collect(obj, depth=0):
        if depth > 4 or obj is None:
            return
        if isinstance(obj, torch.Tensor):
            tensors.append(obj)
        elif isinstance(obj, (list, tuple)):
            for o in obj:
                collect(o, depth + 1)
        elif hasattr(obj, "layers"):  # transformers >= 4.56 Cache: .layers[i].keys / .values
            for layer in obj.layers:
                collect([getattr(layer, "keys", None), getattr(layer, "values", None)], depth + 1)
        elif hasattr(obj, "key_cache"):
            collect([obj.key_cache, obj.value_cache], depth + 1)
    collect(cache)
    seen, total = set(), 0
    for t in tensors:
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key not in seen and t.numel():
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


class ModelRunner:
    """Prefill and cached decode through the HF call convention: ``model(input_ids=…, pixel_values=…,
    attention_mask=…, use_cache=True)`` returns ``.logits`` and ``.cache``; decode passes ``cache=`` and
    the next token. The unwrapped LLaVA and ``dpvr.get_dpvr_model`` models both follow it."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.logits_to_keep = True

    def _call(self, **kwargs):
        if self.logits_to_keep:
            try:
                return self.model(**kwargs, logits_to_keep=1)
            except TypeError:
                self.logits_to_keep = False
        return self.model(**kwargs)

    def prefill(self, inputs: dict):
        out = self._call(**{k: v for k, v in inputs.items() if k != "decode_tokens"}, use_cache=True)
        cache = getattr(out, "cache", None)
        if cache is None:
            cache = getattr(out, "past_key_values", None)
        return cache

    def decode(self, cache, inputs: dict, steps: int):
        """``steps`` cached decode steps. An unpadded prompt (the benchmark's) decodes without an attention mask,
        as a caller without padding would: the M-RoPE families' own forward (Qwen2/2.5/3-VL), given a mask
        but no ``position_ids``, makes positions for the whole mask instead of the new token (``generate``
        passes them), while without one it continues from the cache and its stored ``rope_deltas``."""
        mask = inputs["attention_mask"]
        padded = not bool(mask.all())
        tokens = inputs["decode_tokens"]
        for j in range(steps):
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            out = self._call(input_ids=tokens[:, j : j + 1], attention_mask=mask if padded else None, cache=cache,
                             use_cache=True)
            cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        return cache


def make_inputs(config: PretrainedConfig, batch: int, system: int | None, text: int, new_tokens: int,
                dtype: torch.dtype, device: torch.device, seed: int = 0, layout=None) -> dict:
    """Random inputs of any family (:func:`dpvr.efficiency.inputs.model_inputs`): prompt ids laid out as
    ``system`` tokens (default: the shape's), the shape's visual input(s) (``layout``: its default layout)
    and ``text`` tokens, the family's pixel tensors and token-type ids; plus a fixed sequence of decode
    tokens (never a visual id)."""
    from dpvr.efficiency.inputs import model_inputs, token_ids
    from dpvr.shapes.layout import prompt_layout

    layout = layout or prompt_layout(config, system_tokens=system)
    inputs = model_inputs(config, layout, batch, text, seed, dtype)
    g = torch.Generator().manual_seed(seed + 1)
    inputs["decode_tokens"] = token_ids(config, prompt_layout(config, visuals=[], system_tokens=0), batch,
                                        max(new_tokens, 1), g)
    return {k: v.to(device) for k, v in inputs.items()}


# ---------------------------------------------------------------------------------------- timing
CLOCKS = ("wall", "process")


class Timer:
    """Seconds of a block: CUDA events on a GPU; on CPU ``perf_counter`` (``clock="wall"``) or the CPU
    time of this process, all threads (``clock="process"``: for a shared machine, where wall time
    counts other users' load; use it with ``threads=1``, since idle-spinning threads count too)."""

    def __init__(self, device: torch.device, clock: str = "wall") -> None:
        if clock not in CLOCKS:
            raise ValueError(f"unknown clock {clock!r}: choose one of {', '.join(CLOCKS)}")
        self.device = device
        self.clock = time.process_time if clock == "process" else time.perf_counter

    def __call__(self, fn, *args):
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn(*args)
            end.record()
            torch.cuda.synchronize(self.device)
            return out, start.elapsed_time(end) / 1e3
        t0 = self.clock()
        out = fn(*args)
        return out, self.clock() - t0


def timing_method(device: torch.device, clock: str) -> str:
    if device.type == "cuda":
        return "CUDA events"
    what = "time.process_time (CPU time of the process, all threads)" if clock == "process" else "time.perf_counter (wall)"
    return f"{what}, torch.set_num_threads({torch.get_num_threads()})"


def summarise(values: list[float]) -> dict:
    """Median, quartiles, min, max and count of a list of measurements."""
    a = np.asarray(values, dtype=float)
    if not len(a):
        return {"n": 0}
    q25, q50, q75 = np.percentile(a, [25, 50, 75])
    return {"median": float(q50), "p25": float(q25), "p75": float(q75), "min": float(a.min()), "max": float(a.max()),
            "n": int(len(a))}


@dataclass
class LatencySettings:
    """What :func:`measure_latency` runs. ``threads`` fixes ``torch.set_num_threads`` on CPU."""

    text_tokens: list[int] = field(default_factory=lambda: [64, 128])
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    new_tokens: int = 8
    system_tokens: int | None = None  # tokens before the first image; None: the shape's (35 for LLaVA-1.5)
    layout: str | None = None  # the shape's prompt layout ("image", "video"); None: its first
    warmup: int = 1
    repeats: int = 5
    dtype: str = "float32"
    device: str = "cpu"
    threads: int | None = 2
    attn: str = "sdpa"
    seed: int = 0
    measure_memory: bool = True
    clock: str = "wall"
    split: int | None = None
    num_fusion_layers: int | None = None
    fusion_layers: list[int] | None = None
    side_depth: int = 1
    fastv_k: int = 2
    fastv_ratio: float = 0.5
    vtw_k: int | None = None  # default: the split
    compile: str = "eager"  # prefill: "eager", "compiled" (DPVRModel.compile_prefill) or "both"
    compile_mode: str | None = None  # None: "reduce-overhead" on CUDA (CUDA graphs), torch's default elsewhere
    compile_backend: str = "inductor"

    def __post_init__(self) -> None:
        if self.compile not in COMPILE_CHOICES:
            raise ValueError(f"unknown compile {self.compile!r}: choose one of {', '.join(COMPILE_CHOICES)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}: choose one of {', '.join(DTYPES)}")
        if self.repeats < 1 or self.warmup < 0 or self.new_tokens < 0:
            raise ValueError("repeats must be >= 1, warmup >= 0 and new_tokens >= 0")
        if not self.text_tokens or min(self.text_tokens) < 1:
            raise ValueError(f"text_tokens must be a non-empty list of positive lengths, got {self.text_tokens}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"batch_sizes must be a non-empty list of positive sizes, got {self.batch_sizes}")
        if self.clock not in CLOCKS:
            raise ValueError(f"unknown clock {self.clock!r}: choose one of {', '.join(CLOCKS)}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available on this machine: use --device cpu")
    return device


def bench_setup(config: str | PretrainedConfig, s) -> tuple[PretrainedConfig, torch.device, torch.dtype, int]:
    """What every measuring bench starts with, from its settings ``s`` (``device``, ``dtype``, ``threads``,
    ``split``): the shape's config, the device, the dtype, the split (the shape's usual one by default);
    fixes torch's CPU threads when ``s.threads`` is set."""
    cfg = load_shape_config(config) if isinstance(config, str) else config
    device = resolve_device(s.device)
    if device.type == "cpu" and s.threads:
        torch.set_num_threads(s.threads)
    split = s.split if s.split is not None else default_split(cfg)
    return cfg, device, DTYPES[s.dtype], split


def measure_latency(
    config: str | PretrainedConfig,
    method_names: list[str],
    settings: LatencySettings | None = None,
    progress: bool = True,
    model: torch.nn.Module | None = None,
) -> dict:
    """Measure every method against vanilla on a random-weight model of ``config``; returns a JSON-ready report.

    ``model`` (optional) is a ready base model to use instead of building one.
    """
    s = settings or LatencySettings()
    cfg, device, dtype, split = bench_setup(config, s)
    n_layers = cfg.get_text_config().num_hidden_layers
    methods = make_methods(method_names, n_layers, split, s.num_fusion_layers, s.fusion_layers, s.side_depth,
                           s.fastv_k, s.fastv_ratio, s.vtw_k)

    layout = prompt_layout(cfg, s.layout, system_tokens=s.system_tokens)
    dims = ShapeDims.from_config(cfg, layout)
    base = model if model is not None else build_random_model(cfg, dtype, device, s.attn, s.seed)
    mode = default_mode(device, s.compile_backend, s.compile_mode)
    entries: list[_Entry] = []
    skipped = []
    for m in methods:
        builder = MODEL_BUILDERS.get(m.name)
        if builder is None:
            skipped.append({"method": m.name, "reason": f"no model builder registered for {m.name!r} yet "
                                                        "(dpvr.efficiency.latency.MODEL_BUILDERS)"})
            continue
        try:
            if s.compile in ("eager", "both"):
                entries.append(_Entry(m, m.label, ModelRunner(builder(base, m)), compiled=False))
            if s.compile in ("compiled", "both"):
                entries.append(_Entry(m, f"{m.label} [compiled]", ModelRunner(_compiled_prefill(base, m, builder, mode,
                                                                                                 s.compile_backend)),
                                      compiled=True))
        except (NotImplementedError, ValueError) as err:  # e.g. a family the engine does not route yet
            skipped.append({"method": m.name, "reason": str(err).splitlines()[0]})

    results = []
    load_before = load_average()
    rounds = len(s.batch_sizes) * len(s.text_tokens) * (s.warmup + s.repeats + int(s.measure_memory)) * len(entries)
    bar = tqdm(total=rounds, desc="bench latency", unit="run", disable=not progress)
    room = room_for(len(entries), len(s.batch_sizes) * len(s.text_tokens))
    for batch in s.batch_sizes:
        for t in s.text_tokens:
            inputs = make_inputs(cfg, batch, s.system_tokens, t, s.new_tokens, dtype, device, s.seed, layout)
            with compile_room(room) if s.compile != "eager" else nullcontext():
                results.extend(_measure_layout(entries, inputs, s, device, bar, batch, t))
            analytic = compare(dims, methods, [t], batch=batch, new_tokens=max(s.new_tokens, 1),
                               dtype_bytes=torch.empty((), dtype=dtype).element_size(), layout=layout)
            by_label = {r["label"]: r for r in analytic}
            for r in results:
                if r["batch"] == batch and r["text_tokens"] == t:
                    a = by_label[r["method_label"]]
                    r["analytic"] = {k: a[k] for k in ("prefill_lm_ratio", "prefill_whole_ratio",
                                                       "decode_per_token_ratio", "kv_cache_bytes_ratio",
                                                       "prefill_whole", "decode_per_token", "kv_cache_bytes")}
                    pre = r["ratios"].get("prefill")
                    if pre is not None and a["prefill_whole_ratio"] < 1:
                        r["measured_share_of_analytic_saving"] = (1 - pre) / (1 - a["prefill_whole_ratio"])
    bar.close()
    return {
        "kind": "latency",
        "shape": shape_name(cfg),
        "dims": asdict(dims),
        "settings": asdict(s) | {"split": split, "compile_mode": mode},
        "methods": [{"name": m.name, "label": m.label, "dpvr": m.dpvr.to_dict() if m.dpvr else None,
                     "options": m.options} for m in methods],
        "skipped": skipped,
        "machine": machine_info(device),
        "timing_method": timing_method(device, s.clock),
        "memory_method": memory_method(device),
        "results": results,
        "load": {"before": load_before, "after": load_average()},  # 1, 5, 15-minute load averages
    }


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # pragma: no cover - not on every platform
        return None


def rotated(items: list, rnd: int) -> list:
    """``items`` in round ``rnd``'s order: the order rotates every round, so machine noise hits every item alike."""
    shift = rnd % len(items)
    return items[shift:] + items[:shift]


@dataclass
class _Entry:
    """One timed thing: a method's model, eager or with its prefill compiled."""

    method: Method
    label: str
    runner: ModelRunner
    compiled: bool


def _compiled_prefill(base, method: Method, builder, mode: str | None, backend: str) -> torch.nn.Module:
    """The method's model with ``DPVRModel.compile_prefill``; vanilla as a wrapper that calls the base model (its
    outputs are the base model's, bit for bit), so that its prefill is compiled the same way."""
    if method.name == "vanilla":
        from dpvr import DPVRConfig, get_dpvr_model

        model = get_dpvr_model(base, DPVRConfig(variant="vanilla")).eval()
    else:
        model = builder(base, method)
    if not hasattr(model, "compile_prefill"):
        raise NotImplementedError(f"{method.label}: its model has no compile_prefill")
    return model.compile_prefill(mode=mode, backend=backend)


def paired_ratio(values: dict, label: str, ref: str) -> tuple[float | None, list[float] | None]:
    """Median and [p25, p75] of the per-round ratios ``values[label][i] / values[ref][i]`` (rounds where the
    reference took no time are left out); (None, None) without any."""
    ratios = [a / b for a, b in zip(values[label], values[ref]) if b > 0]
    if not ratios:
        return None, None
    return statistics.median(ratios), [float(np.percentile(ratios, 25)), float(np.percentile(ratios, 75))]


def _measure_layout(entries: list[_Entry], inputs, s: LatencySettings, device, bar, batch, t) -> list[dict]:
    timer = Timer(device, s.clock)
    prefill = {e.label: [] for e in entries}
    decode = {e.label: [] for e in entries}
    cache_bytes, peak = {}, {}
    compiles = {e.label: 0 for e in entries}  # timed rounds in which an entry's prefill (re)compiled
    with torch.inference_mode():
        if any(e.compiled for e in entries):
            # compile rounds, untimed: every method's prefill traced at this shape, in the rotation's orders
            # (methods share dynamo's per-function caches, so one method's entries can send another back
            # to the compiler once)
            for rnd in range(COMPILE_ROUNDS):
                for e in rotated(entries, rnd):
                    e.runner.prefill(inputs)
        for rnd in range(s.warmup + s.repeats):
            for e in rotated(entries, rnd):
                frames = frames_compiled()
                cache, t_pre = timer(e.runner.prefill, inputs)
                if rnd >= s.warmup and frames_compiled() != frames:
                    compiles[e.label] += 1
                cache_bytes[e.label] = cache_nbytes(cache)
                t_dec = 0.0
                if s.new_tokens:
                    _, t_dec = timer(e.runner.decode, cache, inputs, s.new_tokens)
                del cache
                if rnd >= s.warmup:
                    prefill[e.label].append(t_pre)
                    decode[e.label].append(t_dec / max(s.new_tokens, 1))
                bar.update()
        if s.measure_memory:
            for e in entries:
                with track_peak(device) as mem:
                    cache = e.runner.prefill(inputs)
                del cache
                peak[e.label] = mem["peak_bytes"]
                bar.update()
    rows = []
    for e in entries:
        # the reference: vanilla with the same compile setting; a compiled entry is also paired with its eager twin
        ref = next(x.label for x in entries if x.method.name == "vanilla" and x.compiled == e.compiled)
        twin = next((x.label for x in entries if x.compiled is False and x.method.label == e.method.label), None)
        pre, pre_q = paired_ratio(prefill, e.label, ref)
        dec, dec_q = paired_ratio(decode, e.label, ref) if s.new_tokens else (None, None)
        row = {
            "method": e.method.name,
            "label": e.label,
            "method_label": e.method.label,
            "compiled": e.compiled,
            "batch": batch,
            "text_tokens": t,
            "prompt_tokens": int(inputs["input_ids"].shape[1]),
            "prefill_s": summarise(prefill[e.label]),
            "decode_s_per_token": summarise(decode[e.label]) if s.new_tokens else None,
            "kv_cache_bytes": cache_bytes[e.label],
            "peak_prefill_bytes": peak.get(e.label),
            "ratios": {
                "prefill": pre,
                "prefill_p25_p75": pre_q,
                "decode": dec,
                "decode_p25_p75": dec_q,
                "kv_cache": cache_bytes[e.label] / cache_bytes[ref] if cache_bytes[ref] else None,
                "peak_prefill": peak[e.label] / peak[ref] if peak.get(ref) else None,
            },
        }
        if e.compiled:
            row["compiles_while_timed"] = compiles[e.label]
            if twin is not None:  # compiled prefill over the eager one, paired within rounds
                row["compiled_over_eager"], row["compiled_over_eager_p25_p75"] = paired_ratio(prefill, e.label, twin)
        rows.append(row)
    return rows


def _fmt(value, spec: str, scale: float = 1.0) -> str:
    return "" if value is None else format(value * scale, spec)


def format_latency_table(report: dict) -> str:
    """A plain-text table of a :func:`measure_latency` report."""
    head = (f"{'batch':>5} {'text':>5} {'method':<28} {'prefill ms':>10} {'ratio':>6} {'analytic':>8} {'share':>6} "
            f"{'decode ms/tok':>13} {'ratio':>6} {'analytic':>8} {'peak MiB':>9} {'ratio':>6} {'KV MiB':>7} {'ratio':>6} "
            f"{'analytic':>8} {'cmp/eager':>9}")
    lines = [head, "-" * len(head)]
    for r in report["results"]:
        ra, an = r["ratios"], r.get("analytic", {})
        dec = r["decode_s_per_token"] or {}
        lines.append(
            f"{r['batch']:>5} {r['text_tokens']:>5} {r['label']:<28} {_fmt(r['prefill_s']['median'], '.1f', 1e3):>10} "
            f"{_fmt(ra['prefill'], '.3f'):>6} {_fmt(an.get('prefill_whole_ratio'), '.3f'):>8} "
            f"{_fmt(r.get('measured_share_of_analytic_saving'), '.0%'):>6} "
            f"{_fmt(dec.get('median'), '.2f', 1e3):>13} {_fmt(ra['decode'], '.3f'):>6} "
            f"{_fmt(an.get('decode_per_token_ratio'), '.3f'):>8} "
            f"{_fmt(r['peak_prefill_bytes'], '.1f', 2**-20):>9} {_fmt(ra['peak_prefill'], '.3f'):>6} "
            f"{_fmt(r['kv_cache_bytes'], '.1f', 2**-20):>7} {_fmt(ra['kv_cache'], '.3f'):>6} "
            f"{_fmt(an.get('kv_cache_bytes_ratio'), '.3f'):>8} {_fmt(r.get('compiled_over_eager'), '.3f'):>9}"
        )
    for sk in report.get("skipped", []):
        lines.append(f"skipped {sk['method']}: {sk['reason']}")
    return "\n".join(lines)
