"""``dpvr bench serve``: offline vLLM throughput and time to first token, vanilla vs DPVR, in one run.

Runs in the serve venv. A random-weight LLaVA of a bundled shape (``cpu-mid`` by default: 576 image
tokens, Llama hidden 1024 x 16 layers) is written once to a folder with a word-level tokenizer
(``t0 .. t{V-1}``, ``<image>`` at the shape's image token id) and a CLIP processor, plus one adapter per
DPVR method (side branch copied from layer s, as ``side_init="copy"``), fingerprinted from the files.
Each method then gets its own ``vllm.LLM`` (eager, fp32, prefix caching off so repeated prefixes do not
flatter anyone), all up at once, and serves the same prompts: ``system`` random tokens, one random image,
``text`` random tokens. After ``warmup`` untimed rounds, ``repeats`` timed rounds interleave the methods
(order alternating). Two figures per method and round:

- ``ttft_s``: median latency of single requests with ``max_tokens=1`` (time to first token, idle server);
- ``requests_per_s`` / ``output_tokens_per_s``: all prompts submitted at once, ``max_tokens`` each
  (EOS ignored), wall time of ``LLM.generate``.

Ratios are DPVR over vanilla: the median of the per-round ratios, with their quartiles, flagged as noisy
by the rules of `dpvr.efficiency.noise` (spread, too few rounds, machine load). Nothing is downloaded.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

IMAGE, BOS, EOS, PAD, UNK = "<image>", "<s>", "</s>", "<pad>", "<unk>"


@dataclass
class ServeBenchSettings:
    config: str = "cpu-mid"
    methods: list[str] = field(default_factory=lambda: ["vanilla", "lf"])
    split: int | None = None
    num_prompts: int = 8
    system_tokens: int = 32
    text_tokens: int = 64
    max_tokens: int = 16
    ttft_requests: int = 3
    threads: int = 2
    seed: int = 0
    warmup: int = 1
    repeats: int = 5

    def __post_init__(self):
        bad = [m for m in self.methods if m not in ("vanilla", "lf", "pc", "kv")]
        if bad:
            raise ValueError(f"unknown serving method(s) {bad}: choose from vanilla, lf, pc, kv")
        if "vanilla" not in self.methods:
            self.methods = ["vanilla", *self.methods]
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        for name in ("num_prompts", "max_tokens", "ttft_requests", "threads", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")


def _tokenizer(vocab_size: int, image_id: int, bos: int, eos: int, pad: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = {image_id: IMAGE, bos: BOS, eos: EOS, pad: PAD, 0: UNK}
    vocab = {special.get(i, f"t{i}"): i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([IMAGE, BOS, EOS, PAD, UNK])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
                                   extra_special_tokens={"image_token": IMAGE}, model_max_length=8192)


def build_random_checkpoint(shape: str, out: Path, seed: int = 0) -> Path:
    """A random-weight LLaVA of ``shape`` with a tokenizer and processor in ``out`` (kept if already there)."""
    import torch
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    from dpvr.shapes import load_shape_config
    from dpvr.tiny.tokenizer import make_image_processor

    if (out / "config.json").is_file() and (out / "processor_config.json").is_file():
        return out
    config = load_shape_config(shape)
    tc = config.text_config
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tok = _tokenizer(tc.vocab_size, config.image_token_id, tc.bos_token_id, tc.eos_token_id, tc.pad_token_id)
    vision = config.vision_config
    LlavaProcessor(image_processor=make_image_processor(vision.image_size), tokenizer=tok,
                   patch_size=vision.patch_size, vision_feature_select_strategy=config.vision_feature_select_strategy,
                   num_additional_image_tokens=1, image_token=IMAGE).save_pretrained(tmp)
    os.replace(tmp, out)
    return out


def write_copy_adapter(model_dir: Path, variant: str, split: int, out: Path) -> Path:
    """An adapter whose side branch is a copy of layer ``split`` (dpvr's ``side_init="copy"``), made from files."""
    from safetensors import safe_open
    from safetensors.torch import save as save_safetensors

    from dpvr import __version__
    from dpvr.adapter import CONFIG_NAME, FORMAT_VERSION, WEIGHTS_NAME, sign
    from dpvr.config import DPVRConfig
    from dpvr.serve.adapter import checkpoint_fingerprint

    config = DPVRConfig(variant=variant, split=split)
    state = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                for prefix in (f"language_model.model.layers.{split}.", f"model.language_model.layers.{split}."):
                    if key.startswith(prefix):
                        state[f"side_branch.layers.0.{key[len(prefix):]}"] = f.get_tensor(key).contiguous()
    out.mkdir(parents=True, exist_ok=True)
    weights = save_safetensors(state, metadata={"format": "pt"})
    meta = {"format_version": FORMAT_VERSION, "dpvr_version": __version__, "dpvr_config": config.to_dict(),
            "base_model": {"name_or_path": str(model_dir), "fingerprint": checkpoint_fingerprint(model_dir)},
            "num_parameters": sum(v.numel() for v in state.values())}
    # Signed like every saved adapter: the plugin checks the integrity manifest before loading.
    (out / WEIGHTS_NAME).write_bytes(weights)
    (out / CONFIG_NAME).write_text(json.dumps(sign(meta, weights), indent=2, sort_keys=True) + "\n")
    return out


def _prompts(model_dir: Path, s: ServeBenchSettings) -> list[dict]:
    import numpy as np
    from PIL import Image

    cfg = json.loads((model_dir / "config.json").read_text())
    vocab, size = cfg["text_config"]["vocab_size"], cfg["vision_config"]["image_size"]
    rng = np.random.default_rng(s.seed)
    words = lambda n: " ".join(f"t{i}" for i in rng.integers(10, min(vocab, 30000), n))  # noqa: E731
    out = []
    for _ in range(s.num_prompts + s.ttft_requests + 1):
        image = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        out.append({"prompt": f"{words(s.system_tokens)} {IMAGE} {words(s.text_tokens)}",
                    "multi_modal_data": {"image": image}})
    return out


def _engine(model_dir: Path, adapter: Path | None, prompts: list[dict], s: ServeBenchSettings):
    from vllm import LLM

    from dpvr.serve import llm_kwargs

    cfg = json.loads((model_dir / "config.json").read_text())
    image_tokens = (cfg["vision_config"]["image_size"] // cfg["vision_config"]["patch_size"]) ** 2
    max_len = s.system_tokens + image_tokens + s.text_tokens + s.max_tokens + 64
    return LLM(**llm_kwargs(model_dir, adapter) | dict(
        enforce_eager=True, dtype="float32", max_model_len=max_len, max_num_seqs=max(s.num_prompts, 1),
        max_num_batched_tokens=max(4096, max_len), enable_prefix_caching=False, seed=s.seed))


def _round(llm, prompts: list[dict], s: ServeBenchSettings) -> dict:
    """One timed round of one engine: TTFT of single requests (median), then the whole batch at once."""
    from vllm import SamplingParams

    one = SamplingParams(max_tokens=1, temperature=0)
    ttft = []
    for p in prompts[1:1 + s.ttft_requests]:
        t = time.perf_counter()
        llm.generate([p], one, use_tqdm=False)
        ttft.append(time.perf_counter() - t)
    batch = prompts[1 + s.ttft_requests:]
    params = SamplingParams(max_tokens=s.max_tokens, temperature=0, ignore_eos=True)
    t = time.perf_counter()
    outs = llm.generate(batch, params, use_tqdm=False)
    wall = time.perf_counter() - t
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"ttft_s": statistics.median(ttft), "requests_per_s": len(batch) / wall,
            "output_tokens_per_s": tokens / wall, "batch_wall_s": wall, "prompt_tokens": len(outs[0].prompt_token_ids)}


def _quartiles(values: list[float]) -> list[float]:
    if len(values) < 2:
        return [values[0], values[0]]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return [q[0], q[2]]


def _verdict(results: dict, s: ServeBenchSettings, load: list[float], cpus: int) -> dict:
    """Which ratios are too spread to read (the same rules as `dpvr.efficiency.noise`)."""
    from dpvr.efficiency.noise import MAX_RELATIVE_IQR, MIN_REPEATS, relative_iqr

    reasons = []
    for method, r in results.items():
        if method == "vanilla":
            continue
        for key, ratio in r["ratio_vs_vanilla"].items():
            spread = relative_iqr(ratio, r["ratio_vs_vanilla_p25_p75"][key])
            if spread is not None and spread > MAX_RELATIVE_IQR:
                reasons.append(f"{method} {key} ratio varies by {spread:.0%} of its median between rounds")
    if s.repeats < MIN_REPEATS:
        reasons.append(f"only {s.repeats} timed round(s): no spread to judge the ratios by (use {MIN_REPEATS}+)")
    if cpus and max(load) > cpus:
        reasons.append(f"the machine's load average was {max(load):.1f} on {cpus} CPUs during the measurement")
    return {"noisy": bool(reasons), "reasons": reasons, "load_average": load}


def measure_serving(settings: ServeBenchSettings, work_dir: Path, progress=print) -> dict:
    """Build (or reuse) the random model and adapters under ``work_dir``; serve every method; return the report.

    Every method's ``vllm.LLM`` stays up for the whole run: after ``warmup`` untimed rounds each, the
    ``repeats`` timed rounds interleave the methods (the order alternates per round), and each ratio is
    the median of the per-round ratios against vanilla, with their quartiles."""
    import platform

    import vllm

    from dpvr.shapes import default_split, load_shape_config

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    os.environ["OMP_NUM_THREADS"] = str(settings.threads)
    config = load_shape_config(settings.config)
    split = settings.split if settings.split is not None else default_split(config)
    progress(f"building the random {settings.config} checkpoint in {work_dir} ...")
    model_dir = build_random_checkpoint(settings.config, work_dir / f"{Path(settings.config).stem}-seed{settings.seed}",
                                        settings.seed)
    prompts = _prompts(model_dir, settings)
    engines = {}
    try:
        for method in settings.methods:
            adapter = None
            if method != "vanilla":
                adapter = write_copy_adapter(model_dir, method, split, work_dir / f"adapter-{method}-s{split}")
            progress(f"starting {method} ...")
            engines[method] = _engine(model_dir, adapter, prompts, settings)
        for r in range(settings.warmup):
            progress(f"warm-up round {r + 1}/{settings.warmup} ...")
            for llm in engines.values():
                _round(llm, prompts, settings)
        load = [os.getloadavg()[0]]
        rounds: list[dict] = []
        for r in range(settings.repeats):
            progress(f"timed round {r + 1}/{settings.repeats} ...")
            order = settings.methods if r % 2 == 0 else settings.methods[::-1]
            rounds.append({m: _round(engines[m], prompts, settings) for m in order})
        load.append(os.getloadavg()[0])
    finally:
        engines.clear()
        gc.collect()
    keys = ("ttft_s", "requests_per_s", "output_tokens_per_s")
    results = {}
    for method in settings.methods:
        runs = [row[method] for row in rounds]
        paired = {k: [row[method][k] / row["vanilla"][k] for row in rounds] for k in keys}
        results[method] = {k: statistics.median(run[k] for run in runs) for k in keys} | {
            "prompt_tokens": runs[0]["prompt_tokens"], "rounds": runs,
            "ratio_vs_vanilla": {k: statistics.median(v) for k, v in paired.items()},
            "ratio_vs_vanilla_p25_p75": {k: _quartiles(v) for k, v in paired.items()}}
    cpus = os.cpu_count() or 0
    return {"settings": asdict(settings) | {"split": split}, "vllm": vllm.__version__,
            "machine": {"cpus": cpus, "platform": platform.platform(), "threads": settings.threads},
            "timing": "wall clock (time.perf_counter) per generate call; ratios: median of per-round ratios",
            "noise": _verdict(results, settings, load, cpus), "methods": results}


def table(report: dict) -> str:
    rows = [f"{'method':8} {'TTFT s':>8} {'req/s':>8} {'out tok/s':>10}   vs vanilla, median [IQR] of "
            f"{report['settings']['repeats']} interleaved rounds: TTFT, req/s, tok/s"]
    for m, r in report["methods"].items():
        q, iqr = r["ratio_vs_vanilla"], r["ratio_vs_vanilla_p25_p75"]
        cell = ", ".join(f"{q[k]:.3f} [{iqr[k][0]:.3f}-{iqr[k][1]:.3f}]" for k in ("ttft_s", "requests_per_s",
                                                                             "output_tokens_per_s"))
        rows.append(f"{m:8} {r['ttft_s']:8.3f} {r['requests_per_s']:8.3f} {r['output_tokens_per_s']:10.2f}   {cell}")
    noise = report.get("noise") or {}
    if noise.get("noisy"):
        rows.append("NOISY — do not read these ratios as a finding: " + "; ".join(noise["reasons"]))
    return "\n".join(rows)
