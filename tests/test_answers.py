"""Generated answers are the answer text alone: no leading space from the first token's word separator."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from dpvr import embedded
from dpvr.evaluation import Prompt, generate, score, user_turn


@pytest.mark.skipif(not (embedded.PATH / "build.json").exists(), reason="embedded checkpoint not built yet")
def test_embedded_answers_have_no_surrounding_whitespace():
    model, proc = embedded.load_model(), embedded.load_processor()
    items = [json.loads(x) for x in (embedded.PATH / "examples" / "examples.jsonl").read_text().splitlines()][:4]
    prompts = [Prompt([user_turn(it["question"])], [Image.open(embedded.PATH / "examples" / it["image"]).convert("RGB")])
               for it in items]
    answers = generate(model, proc, prompts, max_new_tokens=8)
    assert all(a and a == a.strip() for a in answers), answers
    # the scorers still accept them (they normalise whitespace themselves)
    assert all(score(it, a)["correct"] for it, a in zip(items, answers)), list(zip(items, answers))
