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

from dpvr.evaluation.metrics import LETTERS, rotate_choices

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
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                try:
                    first = json.loads(line)
                except json.JSONDecodeError:
                    return True
                return not isinstance(first, dict) or "question" in first or "answer" in first
    return False


def _check(record, where: str) -> None:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise ValueError(f"{where}: record {record.get('id', '?')!r} lacks {', '.join(missing)} "
                         f"(every record needs {', '.join(REQUIRED)})")
    for k in ("image", "question", "answer"):
        if not isinstance(record[k], str) or (k != "answer" and not record[k].strip()):
            raise ValueError(f"{where}: record {record['id']!r}: {k!r} must be a non-empty string, got {record[k]!r}")
    options = record.get("options")
    if options is not None:
        if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options):
            raise ValueError(f"{where}: record {record['id']!r}: 'options' must be a list of at least 2 strings")
        letters = LETTERS[: len(options)]
        if record["answer"].strip().upper() not in letters:
            raise ValueError(f"{where}: record {record['id']!r}: answer {record['answer']!r} is not one of the "
                             f"option letters {', '.join(letters)}")


def load_family(root: str | Path, family: str, limit: int | None = None, check_images: bool = True) -> list[dict]:
    """The first ``limit`` records of ``root/<family>.jsonl``, validated (ValueError / FileNotFoundError)."""
    root = Path(root)
    path = root / f"{family}.jsonl"
    if not path.is_file():
        have = ", ".join(available_families(root)) if root.is_dir() else "none"
        raise FileNotFoundError(f"benchmark file {path} not found (families in {root}: {have})")
    records, seen = [], set()
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if limit is not None and len(records) >= limit:
                break
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: not valid JSON ({err.msg}); fix or regenerate the benchmark") from None
            _check(record, where)
            record["id"] = str(record["id"])
            if record["id"] in seen:
                raise ValueError(f"{where}: duplicate id {record['id']!r}")
            seen.add(record["id"])
            record.setdefault("family", family)
            record.setdefault("category", "")
            if check_images and not (root / record["image"]).is_file():
                raise FileNotFoundError(f"{where}: image {root / record['image']} of record {record['id']!r} "
                                        "does not exist")
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
