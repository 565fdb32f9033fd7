"""Scoring model answers on benchmark records: the one place dpvr's evaluation metrics live.

    from dpvr.evaluation.metrics import score, summarize_family
    rows = [score(record, prediction) for record, prediction in zip(records, predictions)]
    summary = summarize_family(rows)            # accuracy, per category, POPE metrics, ...

A record is a dict with at least ``question`` and ``answer`` (and ``category``, ``options`` for
multiple choice), as in the generated benchmarks. How it is scored follows from the record:

==========  ==========================================  ====================================
kind        which records                               metrics
==========  ==========================================  ====================================
``mc``      has ``options`` (answer = option letter)    accuracy; optional circular accuracy
``yesno``   answer is yes / no                          POPE: accuracy, precision, recall,
                                                        F1, yes-ratio (positive class = yes)
``short``   anything else                               exact match after normalisation
==========  ==========================================  ====================================

Every figure is a percentage (0-100) rounded to 2 decimals; ``n`` counts records.
"""

from __future__ import annotations

import re
import string
from collections import defaultdict

LETTERS = string.ascii_uppercase
KINDS = ("mc", "yesno", "short")

_ARTICLES = {"a", "an", "the"}
_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve".split())}
_PUNCT = re.compile(r"[^\w\s]")


# --------------------------------------------------------------------------- normalisation

def normalize_text(text: str) -> str:
    """VQA-style normalisation for exact match: lower case, no punctuation or articles, number words as digits.

    ``"Two."`` -> ``"2"``, ``"The Red"`` -> ``"red"``, ``" light-blue "`` -> ``"light blue"``.
    """
    words = _PUNCT.sub(" ", str(text).lower()).split()
    return " ".join(_NUMBER_WORDS.get(w, w) for w in words if w not in _ARTICLES)


def record_kind(record: dict) -> str:
    """``mc``, ``yesno`` or ``short`` (see the module docstring)."""
    if record.get("options"):
        return "mc"
    if normalize_text(record["answer"]) in ("yes", "no"):
        return "yesno"
    return "short"


# --------------------------------------------------------------------------- yes / no

def parse_yes_no(prediction: str) -> str | None:
    """``"yes"``, ``"no"`` or None (neither).

    The first word decides when it is yes or no (``"Yes, there is a ..."``); otherwise, as the
    POPE reference script does, a negation anywhere (``no``, ``not``) means no, and a ``yes``
    anywhere means yes.
    """
    words = normalize_text(prediction).split()
    if not words:
        return None
    if words[0] in ("yes", "no"):
        return words[0]
    if any(w in ("no", "not") for w in words):
        return "no"
    if "yes" in words:
        return "yes"
    return None


def pope_metrics(pairs: list[tuple[str | None, str]]) -> dict:
    """POPE figures for ``(parsed prediction, gold)`` pairs, gold in {yes, no}; "yes" is the positive class.

    An unparsed prediction (None) counts as wrong and as a "no" for precision/recall (it never
    claims the object), and not as a "yes" for the yes-ratio.
    """
    n = len(pairs)
    tp = sum(p == "yes" and g == "yes" for p, g in pairs)
    fp = sum(p == "yes" and g == "no" for p, g in pairs)
    fn = sum(p != "yes" and g == "yes" for p, g in pairs)
    correct = sum(p == g for p, g in pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": _pct(correct, n), "precision": _pct(precision), "recall": _pct(recall), "f1": _pct(f1),
        "yes_ratio": _pct(sum(p == "yes" for p, _ in pairs), n), "n": n,
        "unparsed": sum(p is None for p, _ in pairs),
    }


# --------------------------------------------------------------------------- multiple choice

def _option_letters(options: list[str]) -> str:
    if len(options) > len(LETTERS):
        raise ValueError(f"at most {len(LETTERS)} options are supported, got {len(options)}")
    return LETTERS[: len(options)]


def parse_choice(prediction: str, options: list[str]) -> str | None:
    """The option letter a free-form answer picks, or None when it picks none (or several).

    Accepted, in this order: a bare letter (``"B"``, ``"b"``, ``"B."``, ``"(B)"``); a letter that
    opens the answer (``"(B) circle"``, ``"B. circle"``, ``"B) circle"``, ``"B: circle"``,
    ``"B circle"`` when the rest is option B; none when it is another option's text); the option
    text itself (``"circle"``); a stated letter (``"The answer is B"``, ``"Answer: (B)"``); the one
    option whose text occurs in the answer (``"It is a circle."``).
    """
    letters = _option_letters(options)
    text = str(prediction).strip()
    m = re.fullmatch(r"[(\[]?\s*([A-Za-z])\s*[)\]]?\s*[.:,]?", text)
    if m and m.group(1).upper() in letters:
        return m.group(1).upper()
    m = re.match(r"[(\[]\s*([A-Z])\s*[)\]]", text) or re.match(r"([A-Z])\s*[.):](?:\s|$)", text)
    if m and m.group(1) in letters:
        return m.group(1)
    norm_options = [normalize_text(o) for o in options]
    norm = normalize_text(text)
    if norm in norm_options and norm_options.count(norm) == 1:
        return letters[norm_options.index(norm)]
    m = re.match(r"([A-Z])\s+(.+)", text)
    if m and m.group(1) in letters:
        rest = normalize_text(m.group(2))
        if rest == norm_options[letters.index(m.group(1))]:
            return m.group(1)
        if m.group(1) != "A" and rest in norm_options:
            return None  # "B circle" when B is not circle: the letter and the text contradict each other
    m = re.search(r"\banswer(?:\s+is)?\s*[:\-]?\s*[(\[]?([A-Z])\b", text, flags=re.IGNORECASE)
    if m and m.group(1).upper() in letters:
        return m.group(1).upper()
    found = [letters[i] for i, o in enumerate(norm_options) if o and re.search(rf"\b{re.escape(o)}\b", norm)]
    return found[0] if len(found) == 1 else None


def options_block(options: list[str]) -> str:
    """``"A. x\\nB. y..."``: how the generated benchmarks list options in the question."""
    return "\n".join(f"{letter}. {o}" for letter, o in zip(_option_letters(options), options))


def rotate_choices(record: dict, shift: int) -> dict:
    """The record with its options rotated by ``shift`` (option i moves to i - shift), as MMBench's CircularEval.

    The question must list the options as :func:`options_block` writes them (``A. x`` lines);
    the new record's question, options and answer letter follow the rotation, and it keeps
    ``id`` (the rotation is recorded in ``rotation``).
    """
    options = list(record["options"])
    letters = _option_letters(options)
    block = options_block(options)
    if block not in record["question"]:
        raise ValueError(
            f"record {record.get('id')!r}: circular evaluation needs the question to list its options as "
            f"'A. <option>' lines matching 'options'; they were not found in the question"
        )
    answer = str(record["answer"]).strip().upper()
    if answer not in letters:
        raise ValueError(f"record {record.get('id')!r}: answer {record['answer']!r} is not an option letter {letters}")
    k = shift % len(options)
    rotated = options[k:] + options[:k]
    correct = options[letters.index(answer)]
    return dict(record, question=record["question"].replace(block, options_block(rotated)), options=rotated,
                answer=letters[rotated.index(correct)], rotation=k)


# --------------------------------------------------------------------------- scoring

def score(record: dict, prediction: str) -> dict:
    """Score one prediction: ``{"kind", "parsed", "correct"}``."""
    kind = record_kind(record)
    if kind == "mc":
        parsed = parse_choice(prediction, record["options"])
        gold = str(record["answer"]).strip().upper()
    elif kind == "yesno":
        parsed = parse_yes_no(prediction)
        gold = normalize_text(record["answer"])
    else:
        parsed = normalize_text(prediction)
        gold = normalize_text(record["answer"])
    return {"kind": kind, "parsed": parsed, "correct": parsed is not None and parsed == gold}


def _pct(num: float, den: float = 1.0) -> float:
    return round(100.0 * num / den, 2) if den else 0.0


def _accuracy(rows: list[dict]) -> dict:
    return {"accuracy": _pct(sum(r["correct"] for r in rows), len(rows)), "n": len(rows)}


def summarize_family(rows: list[dict]) -> dict:
    """Figures for one family from scored rows (each a record's ``category``, ``answer`` and :func:`score` fields).

    Rows with a ``rotation`` field (circular mode) are grouped by ``id``: a question counts as
    correct only if every rotation is; ``accuracy_first_pass`` is the accuracy of rotation 0.
    Returns ``{"kind", "accuracy", "n", <kind-specific>, "categories": {cat: {...}}}``.
    """
    if not rows:
        raise ValueError("no predictions to summarise")
    kinds = sorted({r["kind"] for r in rows})
    kind = kinds[0] if len(kinds) == 1 else "mixed"
    circular = any("rotation" in r for r in rows)
    out = {"kind": kind, **_figures(rows, kind, circular)}
    by_cat = defaultdict(list)
    for r in rows:
        by_cat[str(r.get("category", ""))].append(r)
    if len(by_cat) > 1 or "" not in by_cat:
        out["categories"] = {c: _figures(rs, kind, circular) for c, rs in sorted(by_cat.items())}
    return out


def _figures(rows: list[dict], kind: str, circular: bool) -> dict:
    if kind == "yesno":
        return pope_metrics([(r["parsed"], normalize_text(r["answer"])) for r in rows])
    if circular:
        groups = defaultdict(list)
        for r in rows:
            groups[r["id"]].append(r)
        firsts = [r for r in rows if r.get("rotation", 0) == 0]
        return {"accuracy": _pct(sum(all(r["correct"] for r in g) for g in groups.values()), len(groups)),
                "n": len(groups), "accuracy_first_pass": _accuracy(firsts)["accuracy"],
                "unparsed": sum(r["parsed"] is None for r in rows)}
    out = _accuracy(rows)
    if kind == "mc":
        out["unparsed"] = sum(r["parsed"] is None for r in rows)
    return out


def summarize(per_family: dict[str, dict]) -> dict:
    """Overall figures across families: the mean of family accuracies (macro) and the pooled one (micro)."""
    if not per_family:
        raise ValueError("no families to summarise")
    accs = [f["accuracy"] for f in per_family.values()]
    n = sum(f["n"] for f in per_family.values())
    pooled = sum(f["accuracy"] * f["n"] for f in per_family.values()) / n if n else 0.0
    return {"accuracy": round(sum(accs) / len(accs), 2), "accuracy_micro": round(pooled, 2), "n": n,
            "families": len(per_family)}
