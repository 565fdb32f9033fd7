"""Saturation analysis (SPEC §8): where do vision tokens saturate, and where should DPVR split?

Python::

    from dpvr.analysis import analyze_saturation
    result = analyze_saturation(model, samples, batch_size=4)  # samples: dicts of 1-D input_ids, ...
    print(result.suggested_split, result.explanation)

Command line (``dpvr analyze``) and :func:`run_analysis` add loading, the LLaVA JSON data and the
outputs ``saturation.json`` + ``saturation.png``. Memory is bounded by one batch: every statistic
is reduced to per-sample numbers inside forward hooks and accumulated (count, sum, sum of squares).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dpvr.analysis.stats import STATS, LayerProbe, RunningStat, check_llava_style, image_token_id, language_model, make_layout
from dpvr.analysis.transitions import detect_transitions, suggest_split

FORMAT_VERSION = 1


@dataclass
class SaturationResult:
    """Everything ``saturation.json`` holds; ``statistics[name]`` = ``{"mean", "std", "n"}`` per layer."""

    num_layers: int
    statistics: dict
    transitions: dict
    suggested_split: int
    explanation: str
    split_details: dict
    samples: dict
    settings: dict = field(default_factory=dict)
    mechanism: dict | None = None
    mechanism_summary: str | None = None

    def mean(self, name: str) -> list[float | None]:
        return self.statistics[name]["mean"]

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "num_layers": self.num_layers,
            "layers": list(range(self.num_layers)),
            "definitions": DEFINITIONS,
            "statistics": self.statistics,
            "transitions": self.transitions,
            "suggested_split": self.suggested_split,
            "explanation": self.explanation,
            "split_details": self.split_details,
            "samples": self.samples,
            "settings": self.settings,
            "mechanism": self.mechanism,
        }


DEFINITIONS = {
    "layer": "decoder layer index l in 0..N-1; h_l is the input of layer l, h_{l+1} its output",
    "cosine_image": "cos(h_l, h_{l+1}) averaged over image positions of a sample",
    "cosine_text": "cos(h_l, h_{l+1}) averaged over text (non-image, non-padding) positions of a sample",
    "kl_image": "KL(softmax(lm_head(norm(h_{l+1}))) || softmax(lm_head(norm(h_N)))) averaged over "
                "(up to lens_positions evenly spaced) image positions",
    "kl_text": "the same KL at the answer positions (positions whose next token is an assistant answer "
               "token; up to lens_positions evenly spaced), or at the last position when a sample has no answer",
    "attn_text_to_image": "share of attention that text queries after the first image token put on image keys, "
                          "averaged over heads and queries (exact softmax(QK^T) recomputed from the layer's inputs)",
    "attn_per_head": "the same share per head (mean over samples), shape (N, H)",
    "image_key_share": "share of image keys among the keys each of those queries can see: the attention "
                       "mass of a uniform attention",
    "mean/std": "mean and standard deviation over samples of the per-sample averages; n = samples counted",
}


# --------------------------------------------------------------------------- batching

def collate(samples: list[dict], pad_id: int) -> dict:
    """Right-pad a list of samples (1-D ``input_ids``, optional ``answer_mask``) into a batch.

    Right padding keeps every real token at the position it has alone, so batched statistics
    equal per-sample ones.
    """
    L = max(int(s["input_ids"].numel()) for s in samples)
    B = len(samples)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    mask = torch.zeros(B, L, dtype=torch.long)
    ans = torch.zeros(B, L, dtype=torch.bool)
    for b, s in enumerate(samples):
        n = int(s["input_ids"].numel())
        ids[b, :n] = s["input_ids"]
        mask[b, :n] = 1
        if s.get("answer_mask") is not None:
            ans[b, :n] = s["answer_mask"].bool()
    pix = [s["pixel_values"] for s in samples if s.get("pixel_values") is not None]
    batch = {"input_ids": ids, "attention_mask": mask, "answer_mask": ans,
             "pixel_values": torch.cat(pix) if pix else None}
    sizes = [s["image_sizes"] for s in samples if s.get("image_sizes") is not None]
    if sizes:
        batch["image_sizes"] = torch.cat(sizes)
    if any(s.get("extra") for s in samples):
        batch["extra"] = collate_extra([s.get("extra") or {} for s in samples], L)
    return batch


def collate_extra(extras: list[dict], width: int) -> dict:
    """The family's other processor outputs: per-token ones (1, n) right-padded with 0, the rest concatenated."""
    from dpvr.train.data import TOKEN_KEYS, _cat_padded

    out = {}
    for key in dict.fromkeys(k for e in extras for k in e):
        if key in TOKEN_KEYS:
            rows = torch.zeros((len(extras), width), dtype=torch.long)
            for b, e in enumerate(extras):
                if key in e:
                    rows[b, : e[key].shape[-1]] = e[key].reshape(-1)
            out[key] = rows
        else:
            out[key] = _cat_padded([e[key] for e in extras if key in e])
    return out


def _batched(samples: Iterable[dict], batch_size: int, image_id: int, counts: dict) -> Iterator[list[dict]]:
    batch = []
    for s in samples:
        if not bool((s["input_ids"] == image_id).any()):
            counts["skipped_no_image_tokens"] = counts.get("skipped_no_image_tokens", 0) + 1
            continue
        batch.append(s)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _pad_id(model, image_id: int) -> int:
    cfg = getattr(model.config, "text_config", model.config)
    pad = getattr(cfg, "pad_token_id", None)
    if pad is None or pad == image_id:
        pad = 0 if image_id != 0 else 1
    return int(pad)


# --------------------------------------------------------------------------- analysis

@torch.inference_mode()
def analyze_saturation(
    model,
    samples: Iterable[dict],
    *,
    batch_size: int = 1,
    share: float = 0.9,
    collapse_min_drop: float = 0.5,
    lens_positions: int = 64,
    num_fusion_layers: int = 1,
    min_split: int | None = None,
    routed=None,
    progress: bool = True,
    total: int | None = None,
    settings: dict | None = None,
) -> SaturationResult:
    """Per-layer saturation statistics of ``model`` over ``samples``, transitions and a suggested split.

    Args:
        model: a LLaVA-style HF model (``.model.language_model.layers``, ``config.image_token_id``).
        samples: iterable of dicts with ``input_ids`` (L,), ``pixel_values`` (n_images, C, H, W) and
            optionally ``answer_mask`` (L,) (positions whose next token is an answer token). Consumed
            lazily; samples without image tokens are skipped and counted.
        batch_size: samples per forward pass (right-padded).
        share: the share of a curve's change that marks its transition layer.
        collapse_min_drop: how far below its peak text→image attention must fall to count as collapsed.
        lens_positions: image positions and answer positions per sample read by the logit lens
            (each evenly spaced; 0 = all).
        num_fusion_layers, min_split: constraints on the suggested split (see ``transitions``).
        routed: optional routed DPVR model wrapping ``model`` for the mechanism checks.
    """
    from tqdm.auto import tqdm

    check_llava_style(model)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    image_id = image_token_id(model)
    lm = language_model(model)
    N = len(lm.layers)
    H = int(getattr(lm.config, "num_attention_heads", 1))
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    pad_id = _pad_id(model, image_id)

    acc = {k: RunningStat((N,)) for k in STATS}
    acc["attn_per_head"] = RunningStat((N, H))
    key_share = RunningStat(())
    counts: dict = {"used": 0}
    mech = _make_mechanism(model, routed, N, H) if routed is not None else None

    modes = [(m, m.training) for m in (model, routed) if m is not None]
    for m, _ in modes:
        m.eval()  # no dropout while measuring; restored below
    bar = tqdm(total=total, desc="analyze", unit="sample", disable=not progress)
    try:
        for chunk in _batched(samples, batch_size, image_id, counts):
            batch = collate(chunk, pad_id)
            layout = make_layout(batch["input_ids"], batch["attention_mask"], image_id,
                                 batch["answer_mask"], lens_positions)
            inputs = {"input_ids": batch["input_ids"].to(device),
                      "attention_mask": batch["attention_mask"].to(device),
                      "pixel_values": None if batch["pixel_values"] is None
                      else batch["pixel_values"].to(device, dtype)}
            if "image_sizes" in batch:
                inputs["image_sizes"] = batch["image_sizes"].to(device)
            for key, value in batch.get("extra", {}).items():
                inputs[key] = value.to(device, dtype) if value.is_floating_point() else value.to(device)
            with LayerProbe(model) as probe:
                probe.layout = layout
                if mech is not None:
                    with mech.capture_vanilla():
                        model(**inputs, use_cache=False, logits_to_keep=1)
                else:
                    model(**inputs, use_cache=False, logits_to_keep=1)
                values = probe.collect()
            for key in STATS:
                acc[key].update(values[key])
            if "attn_per_head" in values:
                acc["attn_per_head"].update(values["attn_per_head"])
            key_share.update(layout.key_share)
            if mech is not None:
                mech.run_routed(inputs, layout, values)
            counts["used"] += len(chunk)
            bar.update(len(chunk))
    finally:
        bar.close()
        for m, training in modes:
            m.train(training)
    if counts["used"] == 0:
        raise ValueError("no usable samples: the analysis needs samples with at least one image "
                         f"(image token id {image_id}); counts: {counts}")

    statistics = {k: acc[k].to_dict() for k in STATS}
    statistics["attn_per_head"] = {"mean": acc["attn_per_head"].to_dict()["mean"]}
    statistics["image_key_share"] = key_share.to_dict()
    transitions = detect_transitions({k: statistics[k]["mean"] for k in STATS}, share, collapse_min_drop)
    split, explanation, details = suggest_split(transitions, N, num_fusion_layers, min_split)
    settings = dict(settings or {})
    settings.update(batch_size=batch_size, share=share, collapse_min_drop=collapse_min_drop, lens_positions=lens_positions,
                    num_fusion_layers=num_fusion_layers, min_split=min_split,
                    attn_implementation=getattr(lm.config, "_attn_implementation", None),
                    dtype=str(dtype).replace("torch.", ""), device=str(device), versions=_versions())
    result = SaturationResult(
        num_layers=N, statistics=statistics, transitions=transitions, suggested_split=split,
        explanation=explanation, split_details=details, samples=counts, settings=settings)
    if mech is not None:
        result.mechanism = mech.to_dict()
        result.mechanism_summary = mech.summary()
    return result


def _versions() -> dict:
    import transformers

    from dpvr import __version__

    return {"dpvr": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def _make_mechanism(model, routed, N: int, H: int):
    from dpvr.analysis.mechanism import MechanismCheck

    split, fusion = routed_plan(routed, N)
    return MechanismCheck(model, routed, split, fusion, H)


def routed_plan(routed, num_layers: int) -> tuple[int, list[int]]:
    """``(split, fusion_layers)`` of a DPVR model, from its config resolved against the backbone."""
    plan = getattr(routed, "plan", None)
    if plan is not None and hasattr(plan, "fusion_layers"):
        return int(plan.split), list(plan.fusion_layers)
    cfg = getattr(routed, "dpvr_config", None)
    if cfg is None:
        raise ValueError(f"{type(routed).__name__} has no dpvr_config: pass a model from dpvr.get_dpvr_model "
                         "or DPVRModel.from_pretrained")
    plan = cfg.resolve(num_layers)
    return int(plan.split), list(plan.fusion_layers)


# --------------------------------------------------------------------------- files

def write_json_atomic(path: str | Path, data: dict) -> None:
    """``saturation.json``: compact indentation, and NaN refused (a NaN statistic is a bug)."""
    from dpvr.io import write_json_atomic as _write

    _write(path, data, indent=1, sort_keys=False, allow_nan=False)


def write_outputs(result: SaturationResult, out_dir: str | Path, plot: bool = True) -> dict[str, Path]:
    """Write ``saturation.json`` and ``saturation.png`` into ``out_dir``.

    Both are rendered to temporary files first and renamed at the end, so a failure leaves no
    half-written output (and no figure without its JSON).
    """
    from dpvr.io import commit_unit, discard_staging, staging_dir

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = result.to_dict()
    paths = {"json": out / "saturation.json"}
    staging = staging_dir(out, "analyze")
    try:
        if plot:
            from dpvr.analysis.plot import plot_saturation

            paths["png"] = out / "saturation.png"
            plot_saturation(data, staging / "saturation.png")
        write_json_atomic(staging / "saturation.json", data)
        commit_unit(out, staging, [p.name for p in paths.values()][::-1])  # the JSON last
    finally:
        discard_staging(staging)
    return paths


# --------------------------------------------------------------------------- end to end

# The one model loader lives in dpvr.loading; the old name stays importable from here.
from dpvr.loading import load_model as load_model_and_processor  # noqa: E402


def run_analysis(model: str | Path | None = None, data: str | Path | None = None,
                 image_folder: str | Path | None = None, out_dir: str | Path = "runs/analyze", **kwargs
                 ) -> tuple[SaturationResult, dict[str, Path]]:
    """Load, analyse and write ``saturation.json`` / ``saturation.png`` (what ``dpvr analyze`` runs).

    ``model``/``data``/``image_folder`` default to the embedded tiny model and its generated
    training data; ``adapter`` adds the mechanism checks of a trained DPVR adapter. Holds
    ``out_dir``'s lock; the two files are committed together at the end.
    """
    from dpvr.io import recover_units
    from dpvr.outlock import output_lock

    with output_lock(out_dir):
        recover_units(out_dir, "analyze")
        return _run_analysis(model, data, image_folder, out_dir, **kwargs)


def _run_analysis(
    model: str | Path | None = None,
    data: str | Path | None = None,
    image_folder: str | Path | None = None,
    out_dir: str | Path = "runs/analyze",
    *,
    num_samples: int = 64,
    batch_size: int = 4,
    seed: int = 0,
    adapter: str | Path | None = None,
    share: float = 0.9,
    collapse_min_drop: float = 0.5,
    lens_positions: int = 64,
    num_fusion_layers: int = 1,
    min_split: int | None = None,
    attn_implementation: str = "sdpa",
    dtype: str = "auto",
    device: str = "auto",
    plot: bool = True,
    progress: bool = True,
    allow_outside_paths: bool = False,
) -> tuple[SaturationResult, dict[str, Path]]:
    from dpvr.analysis.data import check_images, iter_samples, load_records, select_records

    if num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1, got {num_samples}")
    data, image_folder = _default_data(data, image_folder)
    if not Path(image_folder).is_dir():
        raise FileNotFoundError(f"image folder {image_folder} not found")
    chosen, counts = select_records(load_records(data), num_samples, seed)
    check_images(chosen, image_folder, allow_outside_paths)
    base, processor, model_name = load_model_and_processor(
        model, dtype=dtype, device=device, attn_implementation=attn_implementation)
    routed = None
    if adapter is not None:
        routed = _load_adapter(base, adapter)
    samples = iter_samples(chosen, processor, image_folder, image_token_id(base), allow_outside_paths)
    settings = {"model": model_name, "data": str(data), "image_folder": str(image_folder),
                "num_samples": num_samples, "seed": seed, "adapter": None if adapter is None else str(adapter)}
    result = analyze_saturation(
        base, samples, batch_size=batch_size, share=share, collapse_min_drop=collapse_min_drop,
        lens_positions=lens_positions,
        num_fusion_layers=num_fusion_layers, min_split=min_split, routed=routed, progress=progress,
        total=len(chosen), settings=settings)
    result.samples.update(counts)
    return result, write_outputs(result, out_dir, plot=plot)


def _default_data(data, image_folder):
    if data is None:
        try:
            from dpvr import embedded

            bench = Path(embedded.benchmark_dir())
        except (ImportError, AttributeError, FileNotFoundError) as err:
            raise ValueError(f"no --data given and the embedded default data is not available ({err}): "
                             "pass --data FILE --image-folder DIR") from None
        data = bench / "train.json"
        if not data.is_file():
            raise FileNotFoundError(f"embedded data {data} not found: pass --data FILE --image-folder DIR")
    if image_folder is None:
        image_folder = Path(data).parent
    return Path(data), Path(image_folder)


def _load_adapter(base, adapter):
    adapter = Path(adapter)
    if not adapter.is_dir():
        raise FileNotFoundError(f"adapter directory {adapter} not found")
    try:
        from dpvr import DPVRModel
    except ImportError:
        raise ValueError("--adapter needs the DPVR routing engine (dpvr.DPVRModel), which this install "
                         "does not have") from None
    return DPVRModel.from_pretrained(base, adapter).eval()
