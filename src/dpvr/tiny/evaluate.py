"""Accuracy of a LLaVA model on the generated benchmarks (greedy decoding, exact match).

    from dpvr.tiny.evaluate import evaluate
    report = evaluate(model, processor, "data/", families=["pope", "count"], blind=False)

Answers are compared after :func:`normalize_answer` (lower case, no surrounding punctuation;
for multiple choice the option letter). ``blind=True`` replaces every image with a blank one,
which measures what the model answers from the question alone.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from dpvr.data.generate import load_benchmark
from dpvr.data.questions import CHANCE, FAMILIES


def normalize_answer(text: str, family: str | None = None) -> str:
    t = text.strip().lower()
    t = re.sub(r"^[\s\"'(]+|[\s\"'.,!?)]+$", "", t)
    if family == "mc":
        m = re.match(r"^([a-d])(\b|\.|\))", t)
        return m.group(1) if m else t
    return t


def blank_image(size: int = 64) -> Image.Image:
    return Image.new("RGB", (size, size), (255, 255, 255))


@torch.no_grad()
def generate_answers(model, processor, images: list[Image.Image], questions: list[str],
                     batch_size: int = 32, max_new_tokens: int = 4, progress: bool = False,
                     desc: str = "generate") -> list[str]:
    """Greedy answers to ``questions`` (full user text after the image), one per image."""
    tok = processor.tokenizer
    old_side = tok.padding_side
    tok.padding_side = "left"
    out: list[str] = []
    try:
        for i in tqdm(range(0, len(questions), batch_size), desc=desc, disable=not progress):
            qs, ims = questions[i:i + batch_size], images[i:i + batch_size]
            prompts = [processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
                add_generation_prompt=True) for q in qs]
            enc = processor(images=ims, text=prompts, return_tensors="pt", padding=True)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            out += tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tok.padding_side = old_side
    return out


def evaluate(model, processor, root: str | Path, families=FAMILIES, blind: bool = False, limit: int | None = None,
             batch_size: int = 32, progress: bool = True, predictions: list | None = None) -> dict:
    """Per-family accuracy (%) on ``root/<family>.jsonl``, with per-category breakdown.

    Returns ``{family: {"accuracy", "n", "chance", "categories": {cat: acc}, ["yes_ratio"]}}``.
    If ``predictions`` is a list, one dict per item (id, family, answer, prediction, correct)
    is appended to it.
    """
    root = Path(root)
    model.eval()
    report = {}
    for fam in families:
        recs = load_benchmark(root, fam)[:limit]
        if blind:
            size = processor.image_processor.crop_size["height"]
            images = [blank_image(size)] * len(recs)
        else:
            images = [Image.open(root / r["image"]).convert("RGB") for r in recs]
        preds = generate_answers(model, processor, images, [r["question"] for r in recs], batch_size=batch_size,
                                 progress=progress, desc=f"eval {fam}{' (blind)' if blind else ''}")
        correct = [normalize_answer(p, fam) == normalize_answer(r["answer"], fam) for p, r in zip(preds, recs)]
        if predictions is not None:
            predictions += [{"id": r["id"], "family": fam, "category": r["category"], "answer": r["answer"],
                             "prediction": p, "correct": c} for r, p, c in zip(recs, preds, correct)]
        by_cat = defaultdict(list)
        for c, r in zip(correct, recs):
            by_cat[r["category"]].append(c)
        entry = {"accuracy": round(100 * sum(correct) / max(1, len(correct)), 2), "n": len(correct),
                 "chance": round(CHANCE[fam], 2),
                 "categories": {k: round(100 * sum(v) / len(v), 2) for k, v in sorted(by_cat.items())}}
        if fam == "pope":
            entry["yes_ratio"] = round(100 * sum(normalize_answer(p) == "yes" for p in preds) / max(1, len(preds)), 2)
        report[fam] = entry
    return report
