"""Decode throughput on fixed-shape caches: seconds per token and tokens/s of every method, eager and compiled.

Run it as ``dpvr bench latency --decode --config cpu-mid --threads 1 --clock process`` or from Python::

    from dpvr.efficiency.decode import DecodeSettings, measure_decode
    report = measure_decode("llava-1.5-7b", ["lf"], DecodeSettings(batch_sizes=[8, 64], device="cuda", dtype="bfloat16"))

How it measures:

* one random-weight model of the shape (no download); every method, vanilla included, is a
  ``dpvr.get_dpvr_model`` wrapper of that base decoding on a `DPVRStaticCache`, so all of them run
  the same fixed-shape decode step (vanilla's is the unrouted model's own layers and masks);
* per (batch, text length) each method prefills once (untimed) into a cache with room for
  ``new_tokens``; a *round* decodes ``new_tokens`` fixed, pre-drawn tokens and rewinds the cache to
  the prompt (the buffers stay, the next round overwrites them), so every round does the same work;
* ``compile``: ``eager``, ``compiled`` (``DPVRModel.compile_decode``: ``torch.compile`` of the step,
  ``compile_mode`` — ``reduce-overhead`` on a GPU is CUDA graphs) or ``both``; eager and compiled runs
  of a method are separate entries (``lf`` / ``lf [compiled]``);
* ``warmup`` untimed rounds (compilation happens there), then ``repeats`` timed rounds; in every
  round each entry runs once, in an order that rotates from round to round (interleaved);
* timing: CUDA events on a GPU; on CPU ``perf_counter`` or the process's CPU time (``clock``);
* reported per entry: seconds per token (median, quartiles, min, max, n; ``iqr`` = p75 - p25),
  tokens/s (batch / seconds per token, same statistics), the ratio to vanilla of the same
  compile setting and (compiled entries) the ratio to the method's eager twin, each paired within
  rounds with its quartiles, next to the analytic decode ratio of :mod:`dpvr.efficiency.flops`;
  the machine's load averages before and after (``dpvr.efficiency.noise`` judges the spread).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from dpvr.efficiency.compiling import compile_room, default_mode, frames_compiled, room_for
from dpvr.efficiency.flops import DEFAULT_SYSTEM_TOKENS, ShapeDims, compare
from dpvr.efficiency.latency import (bench_setup, CLOCKS, DTYPES, Timer, build_random_model, load_average,
                                     make_inputs, paired_ratio, rotated, summarise, timing_method)
from dpvr.efficiency.methods import make_methods
from dpvr.efficiency.report import machine_info
from dpvr.shapes import shape_name
from dpvr.shapes.layout import prompt_layout

COMPILE_CHOICES = ("eager", "compiled", "both")


@dataclass
class DecodeSettings:
    """What :func:`measure_decode` runs."""

    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32, 64])
    text_tokens: list[int] = field(default_factory=lambda: [128])
    new_tokens: int = 16
    system_tokens: int | None = DEFAULT_SYSTEM_TOKENS  # None (the CLI's default): LLaVA-1.5's 35
    layout: str | None = None  # the shape's prompt layout ("image", "video"); None: its first
    warmup: int = 3
    repeats: int = 10
    compile: str = "both"
    compile_mode: str | None = None  # None: "reduce-overhead" on CUDA, torch's default elsewhere
    compile_backend: str = "inductor"  # or "cudagraphs" (CUDA graphs of eager kernels: fast to compile), "eager", ...
    dtype: str = "float32"
    device: str = "cpu"
    threads: int | None = 1
    attn: str = "sdpa"
    seed: int = 0
    clock: str = "wall"
    split: int | None = None
    num_fusion_layers: int | None = None
    fusion_layers: list[int] | None = None
    side_depth: int = 1
    fastv_k: int = 2
    fastv_ratio: float = 0.5
    vtw_k: int | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}: choose one of {', '.join(DTYPES)}")
        if self.warmup < 3 or self.repeats < 10:
            raise ValueError(f"decode timing needs warmup >= 3 and repeats >= 10 for a spread worth reporting, "
                             f"got warmup={self.warmup}, repeats={self.repeats}")
        if self.new_tokens < 1:
            raise ValueError(f"new_tokens must be >= 1, got {self.new_tokens}")
        if not self.text_tokens or min(self.text_tokens) < 1:
            raise ValueError(f"text_tokens must be a non-empty list of positive lengths, got {self.text_tokens}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"batch_sizes must be a non-empty list of positive sizes, got {self.batch_sizes}")
        if self.compile not in COMPILE_CHOICES:
            raise ValueError(f"unknown compile {self.compile!r}: choose one of {', '.join(COMPILE_CHOICES)}")
        if self.clock not in CLOCKS:
            raise ValueError(f"unknown clock {self.clock!r}: choose one of {', '.join(CLOCKS)}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


def _stats(values: list[float]) -> dict:
    out = summarise(values)
    if out.get("n"):
        out["iqr"] = out["p75"] - out["p25"]
    return out


class _Entry:
    """One timed thing: a method's wrapper, eager or compiled, with its prefilled static cache."""

    def __init__(self, method, model, compiled_fn, label: str):
        self.method, self.model, self.compiled_fn, self.label = method, model, compiled_fn, label
        self.cache = None

    def prefill(self, inputs: dict, new_tokens: int) -> None:
        from dpvr.engine.static_cache import DPVRStaticCache

        self.cache = DPVRStaticCache(self.model.text_config, max_new_tokens=new_tokens)
        prompt = {k: v for k, v in inputs.items() if k != "decode_tokens"}  # the family's own multimodal inputs
        self.model(**prompt, cache=self.cache, use_cache=True, logits_to_keep=1)

    def decode(self, tokens: torch.Tensor) -> None:
        self.model._decode_fn = self.compiled_fn
        self.model._decode_graphs = self.compiled_fn is not None and tokens.is_cuda
        for j in range(tokens.shape[1]):
            self.model(input_ids=tokens[:, j : j + 1], cache=self.cache, use_cache=True)
        self.cache.rewind()


def measure_decode(config, method_names: list[str], settings: DecodeSettings | None = None,
                   progress: bool = True, model: torch.nn.Module | None = None) -> dict:
    """Time cached decode of every method (and vanilla) on static caches; returns a JSON-ready report."""
    from dpvr import get_dpvr_model
    from dpvr.config import DPVRConfig

    s = settings or DecodeSettings()
    cfg, device, dtype, split = bench_setup(config, s)
    methods = make_methods(method_names, cfg.text_config.num_hidden_layers, split, s.num_fusion_layers,
                           s.fusion_layers, s.side_depth, s.fastv_k, s.fastv_ratio, s.vtw_k)
    layout = prompt_layout(cfg, s.layout, system_tokens=_system(s))
    dims = ShapeDims.from_config(cfg, layout)
    mode = default_mode(device, s.compile_backend, s.compile_mode)
    base = model if model is not None else build_random_model(cfg, dtype, device, s.attn, s.seed)

    entries: list[_Entry] = []
    for m in methods:
        wrapped = get_dpvr_model(base, m.dpvr if m.dpvr is not None else DPVRConfig(variant="vanilla")).eval()
        if s.compile in ("eager", "both"):
            entries.append(_Entry(m, wrapped, None, m.label))
        if s.compile in ("compiled", "both"):
            wrapped.compile_decode(mode=mode, backend=s.compile_backend)
            entries.append(_Entry(m, wrapped, wrapped._decode_fn, f"{m.label} [compiled]"))
            wrapped.compile_decode(backend=None)

    results = []
    total = len(s.batch_sizes) * len(s.text_tokens) * (s.warmup + s.repeats) * len(entries)
    bar = tqdm(total=total, desc="bench decode", unit="run", disable=not progress)
    timer = Timer(device, s.clock)
    load_before = load_average()
    room = room_for(len(entries), len(s.batch_sizes) * len(s.text_tokens))
    with torch.inference_mode(), compile_room(room):
        for batch in s.batch_sizes:
            for t in s.text_tokens:
                inputs = make_inputs(cfg, batch, _system(s), t, s.new_tokens, dtype, device, s.seed, layout)
                for e in entries:
                    e.prefill(inputs, s.new_tokens)
                per_token = {e.label: [] for e in entries}
                compiles = {e.label: 0 for e in entries}  # timed rounds in which an entry's step (re)compiled
                for rnd in range(s.warmup + s.repeats):
                    for e in rotated(entries, rnd):
                        frames = frames_compiled()
                        _, sec = timer(e.decode, inputs["decode_tokens"][:, : s.new_tokens])
                        if rnd >= s.warmup:
                            per_token[e.label].append(sec / s.new_tokens)
                            compiles[e.label] += int(frames_compiled() != frames)
                        bar.update()
                analytic = {r["label"]: r for r in compare(dims, methods, [t], _system(s), 1, batch, s.new_tokens,
                                                           torch.empty((), dtype=dtype).element_size(), layout=layout)}
                rows = _rows(entries, per_token, analytic, batch, t, int(inputs["input_ids"].shape[1]))
                for row in rows:
                    if row["compiled"]:
                        row["compiles_while_timed"] = compiles[row["label"]]
                results.extend(rows)
                for e in entries:
                    e.cache = None
    bar.close()
    return {
        "kind": "latency-decode",
        "shape": shape_name(cfg),
        "dims": asdict(dims),
        "settings": asdict(s) | {"split": split, "compile_mode": mode},
        "methods": [{"name": m.name, "label": m.label, "dpvr": m.dpvr.to_dict() if m.dpvr else None} for m in methods],
        "machine": machine_info(device),
        "timing_method": timing_method(device, s.clock),
        "cache": "DPVRStaticCache (per-layer preallocated), rewound to the prompt after every round",
        "results": results,
        "load": {"before": load_before, "after": load_average()},  # 1, 5, 15-minute load averages
    }


def _rows(entries, per_token, analytic, batch, t, prompt_tokens) -> list[dict]:
    rows = []
    for e in entries:
        compiled = e.compiled_fn is not None
        ref = next(x for x in entries if x.method.name == "vanilla" and (x.compiled_fn is not None) == compiled)
        ratio, ratio_q = paired_ratio(per_token, e.label, ref.label)
        eager_twin = next((x for x in entries if x.method.label == e.method.label and x.compiled_fn is None), None)
        vs_eager, vs_eager_q = (None, None)  # compiled over eager, paired within rounds
        if compiled and eager_twin is not None:
            vs_eager, vs_eager_q = paired_ratio(per_token, e.label, eager_twin.label)
        a = analytic.get(e.method.label, {})
        rows.append({
            "method": e.method.name,
            "label": e.label,
            "compiled": compiled,
            "batch": batch,
            "text_tokens": t,
            "prompt_tokens": prompt_tokens,
            "s_per_token": _stats(per_token[e.label]),
            "tokens_per_s": _stats([batch / x for x in per_token[e.label]]),
            "ratio_to_vanilla": ratio,
            "ratio_to_vanilla_p25_p75": ratio_q,
            "compiled_over_eager": vs_eager,
            "compiled_over_eager_p25_p75": vs_eager_q,
            "analytic_decode_ratio": a.get("decode_per_token_ratio"),
        })
    return rows


def format_decode_table(report: dict) -> str:
    """A plain-text table of a :func:`measure_decode` report."""
    head = (f"{'batch':>5} {'text':>5} {'method':<24} {'ms/token':>9} {'IQR':>7} {'tokens/s':>9} {'ratio':>6} "
            f"{'p25-p75':>11} {'analytic':>8} {'cmp/eager':>9} {'p25-p75':>11}")
    lines = [head, "-" * len(head)]
    for r in report["results"]:
        sp, iqr = r["s_per_token"], r["ratio_to_vanilla_p25_p75"]
        lines.append(
            f"{r['batch']:>5} {r['text_tokens']:>5} {r['label']:<24} {sp['median'] * 1e3:>9.3f} {sp['iqr'] * 1e3:>7.3f} "
            f"{r['tokens_per_s']['median']:>9.1f} {r['ratio_to_vanilla']:>6.3f} "
            f"{iqr[0]:>5.3f}-{iqr[1]:<5.3f} {_f(r['analytic_decode_ratio']):>8} {_f(r['compiled_over_eager']):>9} "
            f"{_range(r.get('compiled_over_eager_p25_p75')):>11}")
    return "\n".join(lines)


def _f(x) -> str:
    return "" if x is None else f"{x:.3f}"


def _range(q) -> str:
    return "" if not q else f"{q[0]:.3f}-{q[1]:.3f}"


def _system(s) -> int:
    """System tokens of the prompt: the setting, or LLaVA-1.5's 35 when the CLI leaves it to the shape."""
    return DEFAULT_SYSTEM_TOKENS if s.system_tokens is None else s.system_tokens
