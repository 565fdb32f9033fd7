"""Benchmark files: ``<root>/<family>.jsonl``, one record per line, images relative to ``root``.

    records = load_family(root, "pope", limit=100)     # validated: fields, option letters, images exist

Record fields: ``id`` (unique), ``image`` (path relative to ``root``), ``question`` (the full user
text after the image), ``answer``; optional ``category`` and ``options`` (multiple choice: the
answer is an option letter). The generated benchmarks (``dpvr data generate``) have this format,
and so may any other benchmark converted to it.
"""

from __future__ import annotations

import json
from pathlib import Path

from dpvr.evaluation.metrics import rotate_choices
from dpvr.validation import BadInput, check_image, resolve_inside, validate_benchmark_record

REQUIRED = ("id", "image", "question", "answer")


def available_families(root: str | Path) -> list[str]:
    """Families with a ``<family>.jsonl`` of benchmark records in ``root``: the generated ones first (in their
    order), then the rest alphabetically. Other JSONL files (e.g. ``captions.jsonl``, whose first record lacks
    ``question``/``answer``) are not families."""
    from dpvr.data.questions import FAMILIES

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"benchmark folder {root} does not exist (pass --benchmark DIR with <family>.jsonl files)")
    names = sorted(p.stem for p in root.glob("*.jsonl") if not p.name.startswith(".") and _looks_like_benchmark(p))
    ordered = [f for f in FAMILIES if f in names] + [f for f in names if f not in FAMILIES]
    if not ordered:
        raise FileNotFoundError(f"no <family>.jsonl benchmark files in {root}: not a benchmark folder "
                                "(`dpvr data generate --out DIR` writes one)")
    return ordered


def _looks_like_benchmark(path: Path) -> bool:
    """Whether the first record of ``path`` has the benchmark fields (a malformed file counts: it errors later)."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.strip():
                try:
                    first = json.loads(line)
                except (json.JSONDecodeError, RecursionError):
                    return True
                return not isinstance(first, dict) or "question" in first or "answer" in first
    return False


def load_family(root: str | Path, family: str, limit: int | None = None, check_images: bool = True,
                allow_outside_paths: bool = False) -> list[dict]:
    """The first ``limit`` records of ``root/<family>.jsonl``, validated (ValueError / FileNotFoundError).

    Each record is checked against :class:`dpvr.validation.BenchmarkRecord`; its image must resolve inside
    ``root`` (unless ``allow_outside_paths``) and, with ``check_images``, be a readable image within
    Pillow's pixel limit (header only: nothing is decoded here).
    """
    root = Path(root)
    path = root / f"{family}.jsonl"
    if not path.is_file():
        have = ", ".join(available_families(root)) if root.is_dir() else "none"
        raise FileNotFoundError(f"benchmark file {path} not found (families in {root}: {have})")
    records, seen = [], set()
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if limit is not None and len(records) >= limit:
                break
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise BadInput(f"{where}: not UTF-8 text; is {path.name} really a benchmark file?") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise BadInput(f"{where}: not valid JSON ({err.msg}); fix or regenerate the benchmark") from None
            except RecursionError:
                raise BadInput(f"{where}: nested too deeply to be a benchmark record") from None
            validate_benchmark_record(record, where)
            image = resolve_inside(root, record["image"], f"{where}: record {record['id']!r}", allow_outside_paths)
            record["id"] = str(record["id"])
            if record["id"] in seen:
                raise ValueError(f"{where}: duplicate id {record['id']!r}")
            seen.add(record["id"])
            record.setdefault("family", family)
            record.setdefault("category", "")
            if check_images and not image.is_file():
                raise FileNotFoundError(f"{where}: image {image} of record {record['id']!r} does not exist")
            if check_images:
                check_image(image, f"{where}: record {record['id']!r}")
            records.append(record)
    if not records:
        raise ValueError(f"{path} has no records")
    return records


def expand_circular(records: list[dict]) -> list[dict]:
    """Every multiple-choice record once per rotation of its options (others unchanged), as MMBench's CircularEval."""
    out = []
    for r in records:
        if r.get("options"):
            out += [rotate_choices(r, k) for k in range(len(r["options"]))]
        else:
            out.append(r)
    return out


def manifest_sha256(root: str | Path) -> str | None:
    """sha256 of ``root/manifest.json`` (generated benchmarks), or None."""
    from dpvr.evaluation.loading import file_sha256

    path = Path(root) / "manifest.json"
    return file_sha256(path) if path.is_file() else None
