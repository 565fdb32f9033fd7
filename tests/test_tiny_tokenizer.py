"""Tokenizer + processor of the tiny LLaVA: image-token expansion, chat template, round trip."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer

from dpvr.data import generate_dataset
from dpvr.tiny.tokenizer import IMAGE, make_processor, train_tokenizer, training_texts


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok") / "d"
    generate_dataset(root, seed=0, num_train=60, num_test_per_family=6, progress=False)
    recs = json.loads((root / "train.json").read_text())
    tok = train_tokenizer(training_texts(recs))
    return root, recs, make_processor(tok, image_size=64, patch_size=8)


def test_processor_expands_image_to_configured_tokens(setup, tmp_path):
    root, _, proc = setup
    bench = [json.loads(x) for x in (root / "pope.jsonl").read_text().splitlines()]
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": bench[0]["question"]}]}]
    prompt = proc.apply_chat_template(msgs, add_generation_prompt=True)
    assert prompt.startswith("USER: <image>\n") and prompt.endswith(" ASSISTANT:")
    enc = proc(images=Image.open(root / bench[0]["image"]), text=prompt, return_tensors="pt")
    image_id = proc.tokenizer.convert_tokens_to_ids(IMAGE)
    n_image = int((enc["input_ids"] == image_id).sum())
    assert n_image == 64 and enc["pixel_values"].shape == (1, 3, 64, 64)
    n_text = enc["input_ids"].shape[1] - n_image
    assert 3 * n_text >= 64 >= 2 * n_text  # image tokens several times the prompt's text tokens
    # survives save/load through the stock loaders
    proc.save_pretrained(tmp_path)
    again = AutoProcessor.from_pretrained(tmp_path)
    enc2 = again(images=Image.open(root / bench[0]["image"]), text=prompt, return_tensors="pt")
    assert enc2["input_ids"].tolist() == enc["input_ids"].tolist()


def test_image_token_is_special_and_round_trip(setup, tmp_path):
    _, recs, proc = setup
    tok = proc.tokenizer
    assert IMAGE in tok.all_special_tokens
    assert tok(IMAGE, add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids(IMAGE)]
    text = recs[0]["conversations"][0]["value"] + " " + recs[0]["conversations"][1]["value"]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert len(ids) < len(text) / 2  # words, not characters
    tok.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).decode(ids) == text


def test_chat_template_is_llava_15(setup):
    _, _, proc = setup
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q1?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A1"}]},
            {"role": "user", "content": [{"type": "text", "text": "Q2?"}]}]
    assert (proc.apply_chat_template(msgs, add_generation_prompt=True)
            == "USER: <image>\nQ1? ASSISTANT: A1</s>USER: Q2? ASSISTANT:")
