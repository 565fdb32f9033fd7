"""``run_eval``: several methods on benchmark files in one call -> results.json, a Markdown table, predictions.

    from dpvr.evaluation import EvalSettings, run_eval
    results = run_eval(["vanilla", "lf=adapter:runs/lf/adapter", "fastv:k=2,ratio=0.25"], out="runs/eval",
                       settings=EvalSettings(batch_size=16, blind="also"))

Output folder::

    results.json            per method: per family every metric (+ categories), overall; settings,
                            versions, the base model's fingerprint, each method's adapter/model fingerprint
    results.md              the comparison table and per-family/per-category tables
    predictions/<label>.jsonl   one line per question: id, family, category, question, answer,
                            prediction, parsed, correct (and rotation in circular mode)

Nothing is written to ``out`` until every method has run: predictions go to a staging folder
first, and ``results.json`` is written last (atomically), so a crash leaves no partial results.
Generation is greedy and batched with the KV cache; the same inputs give the same outputs.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image

from dpvr.evaluation import benchmark as bench
from dpvr.evaluation.generation import Prompt, blank_image, generate, user_turn
from dpvr.evaluation.loading import check_method, load_base, load_method
from dpvr.evaluation.methods import MethodSpec, check_unique_labels, parse_method
from dpvr.evaluation.metrics import score, summarize, summarize_family
from dpvr.evaluation.report import markdown_report, markdown_table
from dpvr.io import commit_unit, discard_staging, recover_units, staging_dir, write_json_atomic, write_text_atomic
from dpvr.outlock import output_lock
from dpvr.progress import bar as progress_bar
from dpvr.validation import open_image

BLIND_MODES = ("off", "also", "only")
BLIND_SUFFIX = " [blind]"


@dataclass
class EvalSettings:
    """How ``run_eval`` evaluates (everything but the methods and the output folder).

    Args:
        benchmark: folder with ``<family>.jsonl`` files (None: the embedded default benchmark).
        families: families to evaluate (None: every ``*.jsonl`` in ``benchmark``).
        limit: evaluate the first ``limit`` records of each family.
        batch_size: prompts per ``generate`` call (left padding, KV cache).
        max_new_tokens: greedy decoding budget per answer.
        blind: ``off``; ``also`` (each method once more with every image blank: rows ``<label> [blind]``);
            ``only`` (blank images only).
        circular: ask each multiple-choice question once per rotation of its options; correct only if
            every rotation is (MMBench's CircularEval).
    """

    benchmark: str | None = None
    families: list[str] | None = None
    limit: int | None = None
    batch_size: int = 16
    max_new_tokens: int = 16
    blind: str = "off"
    circular: bool = False
    seed: int = 0
    dtype: str = "auto"
    device: str = "auto"
    attn_implementation: str = "sdpa"
    progress: bool = True
    allow_outside_paths: bool = False  # image paths may resolve outside the benchmark folder

    def __post_init__(self) -> None:
        if self.blind is True or self.blind is False:
            self.blind = "also" if self.blind else "off"
        if self.blind not in BLIND_MODES:
            raise ValueError(f"blind must be one of {', '.join(BLIND_MODES)}, got {self.blind!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise ValueError(f"limit must be an integer >= 1, got {self.limit!r}")


# --------------------------------------------------------------------------- one model on records

def _open_image(root: Path, record: dict) -> Image.Image:
    # the path was checked against the benchmark folder when the record was loaded (benchmark.load_family)
    return open_image(root / record["image"], f"record {record['id']!r}")


def answer_records(model, processor, records: list[dict], root: str | Path, *, blind: bool = False,
                   batch_size: int = 16, max_new_tokens: int = 16, progress: bool = False,
                   desc: str = "generate", bar=None) -> list[str]:
    """Greedy answers of ``model`` to ``records`` (images loaded per batch; blank ones when ``blind``).

    ``bar``: a progress bar to advance (one per method, over all its families) instead of a new one.
    """
    root = Path(root)
    blank = blank_image(processor) if blind else None
    answers: list[str] = []
    own = bar is None
    bar = progress_bar(total=len(records), desc=desc, unit="q", enabled=progress) if own else bar
    with bar if own else contextlib.nullcontext():
        for i in range(0, len(records), batch_size):
            chunk = records[i:i + batch_size]
            prompts = [Prompt([user_turn(r["question"])], [blank if blind else _open_image(root, r)]) for r in chunk]
            answers += generate(model, processor, prompts, max_new_tokens=max_new_tokens)
            bar.update(len(chunk))
    return answers


def score_family(records: list[dict], answers: list[str]) -> tuple[dict, list[dict]]:
    """(family summary, prediction rows) for one family's records and the model's answers."""
    rows = []
    for r, a in zip(records, answers, strict=True):
        row = {"id": r["id"], "family": r["family"], "category": r["category"], "question": r["question"],
               "answer": r["answer"], "prediction": a, **score(r, a)}
        if "rotation" in r:
            row["rotation"] = r["rotation"]
        rows.append(row)
    return summarize_family(rows), rows


def evaluate_model(model, processor, records_by_family: dict[str, list[dict]], root: str | Path, *,
                   blind: bool = False, batch_size: int = 16, max_new_tokens: int = 16, progress: bool = True,
                   label: str = "") -> tuple[dict, list[dict]]:
    """Per-family summaries and all prediction rows of one model (already loaded) on validated records."""
    model.eval()
    families, rows = {}, []
    desc = f"eval {label or 'model'}{' (blind)' if blind and not label.endswith(BLIND_SUFFIX) else ''}"
    total = sum(len(r) for r in records_by_family.values())
    with progress_bar(total=total, desc=desc, unit="q", enabled=progress) as bar:
        for fam, records in records_by_family.items():
            bar.set_postfix_str(fam, refresh=False)
            answers = answer_records(model, processor, records, root, blind=blind, batch_size=batch_size,
                                     max_new_tokens=max_new_tokens, bar=bar)
            families[fam], fam_rows = score_family(records, answers)
            rows += fam_rows
    return families, rows


def accuracy_report(model, processor, root: str | Path, families=None, *, blind: bool = False,
                    limit: int | None = None, batch_size: int = 32, max_new_tokens: int = 6, progress: bool = True,
                    predictions: list | None = None) -> dict:
    """Per-family accuracy of one loaded model, in the shape of the tiny build's report.

    Returns ``{family: {"accuracy", "n", "chance", "categories": {cat: accuracy}, ["yes_ratio"]}}`` (percent);
    with ``predictions`` a list, one row per question is appended to it. The figures are
    :func:`evaluate_model`'s (same parsing and metrics as ``dpvr eval``).
    """
    records = load_records(root, families, limit, check_images=not blind)
    fams, rows = evaluate_model(model, processor, records, root, blind=blind, batch_size=batch_size,
                                max_new_tokens=max_new_tokens, progress=progress)
    if predictions is not None:
        predictions += rows
    chance = _chance(list(fams))
    report = {}
    for fam, f in fams.items():
        entry = {"accuracy": f["accuracy"], "n": f["n"], "chance": chance.get(fam),
                 "categories": {c: v["accuracy"] for c, v in f.get("categories", {}).items()}}
        if "yes_ratio" in f:
            entry["yes_ratio"] = f["yes_ratio"]
        report[fam] = entry
    return report


def load_records(root: str | Path, families: list[str] | None = None, limit: int | None = None,
                 circular: bool = False, check_images: bool = True,
                 allow_outside_paths: bool = False) -> dict[str, list[dict]]:
    """Validated records per family (all of ``root``'s families by default), expanded for circular mode."""
    families = list(families) if families else bench.available_families(root)
    out = {}
    for fam in families:
        records = bench.load_family(root, fam, limit=limit, check_images=check_images,
                                    allow_outside_paths=allow_outside_paths)
        out[fam] = bench.expand_circular(records) if circular else records
    return out


# --------------------------------------------------------------------------- the whole run

def _slug(label: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.+-]+", "_", label).strip("_") or "method"
    name, i = base, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def _versions() -> dict:
    import transformers

    from dpvr import __version__

    return {"dpvr": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def _default_benchmark() -> Path:
    try:
        from dpvr import embedded

        return embedded.benchmark_dir()
    except FileNotFoundError as err:
        raise FileNotFoundError(f"no --benchmark given and the embedded default is not available ({err}); "
                                "pass --benchmark DIR (e.g. one written by `dpvr data generate`)") from None


def _check_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot write to the output folder {out} ({err})") from None


def _chance(families: list[str]) -> dict:
    from dpvr.data.questions import CHANCE

    return {f: round(CHANCE[f], 2) for f in families if f in CHANCE}


def run_eval(methods: list[str | MethodSpec], out: str | Path, model: str | Path | None = None,
             settings: EvalSettings | None = None, base=None, processor=None) -> dict:
    """Evaluate every method on the benchmark and write ``out`` (see the module docstring); return results.json's dict.

    ``model``: the base model folder or hub id (None: the embedded default). ``base``/``processor``:
    an already loaded base model (then ``model`` only labels it).
    """
    settings = settings or EvalSettings()
    specs = [m if isinstance(m, MethodSpec) else parse_method(m) for m in methods]
    if not specs:
        raise ValueError("no method to evaluate: pass at least one --method (e.g. --method vanilla)")
    check_unique_labels(specs)
    out = Path(out)
    with output_lock(out):  # one writer per folder; refused at once if another live process holds it
        recover_units(out, "eval")  # finish a commit a kill interrupted; drop dead runs' stagings
        return _run_eval(specs, out, model, settings, base, processor)


def _run_eval(specs: list[MethodSpec], out: Path, model, settings: EvalSettings, base, processor) -> dict:
    _check_out(out)
    root = Path(settings.benchmark) if settings.benchmark else _default_benchmark()
    records = load_records(root, settings.families, settings.limit, settings.circular,
                           check_images=settings.blind != "only", allow_outside_paths=settings.allow_outside_paths)
    families = list(records)
    if base is None:
        base, processor, model_path = load_base(model, settings.dtype, settings.device, settings.attn_implementation)
    else:
        model_path = str(model) if model is not None else getattr(base, "name_or_path", None)
    for spec in specs:  # fail fast, before any generation
        check_method(spec, base)

    from dpvr.adapter import base_fingerprint

    blind_runs = {"off": [False], "also": [False, True], "only": [True]}[settings.blind]
    results = {
        "settings": {**asdict(settings), "benchmark": str(root), "families": families,
                     "benchmark_manifest_sha256": bench.manifest_sha256(root),
                     "num_records": {f: len(r) for f, r in records.items()},
                     "device": str(next(base.parameters()).device),
                     "dtype": str(next(base.parameters()).dtype).replace("torch.", ""),
                     "command": " ".join(sys.argv) if sys.argv else None},
        "versions": _versions(),
        "model": {"path": str(model_path), "fingerprint": base_fingerprint(base)},
        "chance": _chance(families),
        "methods": {},
    }
    staging = staging_dir(out, "eval")
    try:
        taken: set[str] = set()
        for spec in specs:
            with load_method(spec, base, processor) as loaded:
                for blind in blind_runs:
                    label = spec.label + (BLIND_SUFFIX if blind else "")
                    torch.manual_seed(settings.seed)
                    start = time.perf_counter()
                    fams, rows = evaluate_model(loaded.model, loaded.processor, records, root, blind=blind,
                                                batch_size=settings.batch_size, max_new_tokens=settings.max_new_tokens,
                                                progress=settings.progress, label=label)
                    seconds = time.perf_counter() - start
                    pred_name = f"predictions/{_slug(label, taken)}.jsonl"
                    write_text_atomic(staging / pred_name, "".join(_jsonl(r) for r in rows))
                    results["methods"][label] = {
                        "spec": spec.to_dict(), "blind": blind, **loaded.info, "families": fams,
                        "overall": summarize(fams), "seconds": round(seconds, 2),
                        "questions_per_second": round(len(rows) / seconds, 2) if seconds > 0 else None,
                        "predictions": pred_name,
                    }
        results["method_order"] = list(results["methods"])  # results.json sorts keys; this keeps the run's order
        _commit(out, staging, results)
    finally:
        discard_staging(staging)
    return results


def _jsonl(row: dict) -> str:
    import json

    return json.dumps(row, ensure_ascii=False) + "\n"


def _commit(out: Path, staging: Path, results: dict) -> None:
    """Move the finished outputs into ``out`` as one unit (``dpvr.io.commit_unit``), results.json last."""
    write_text_atomic(staging / "results.md", markdown_report(results))
    write_json_atomic(staging / "results.json", results)
    commit_unit(out, staging, ["predictions", "results.md", "results.json"])


def table(results: dict) -> str:
    """The comparison table (Markdown) of a results dict."""
    return markdown_table(results)
