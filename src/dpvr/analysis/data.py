"""Samples for the analysis: LLaVA conversation JSON + image folder, through the model's processor.

Each record (``{"id", "image", "conversations": [{"from": "human"|"gpt", "value"}]}``) is
rendered with the processor's chat template and tokenised with the images expanded to image
tokens. The positions whose next token belongs to an assistant answer are marked
(``answer_mask``): the logit lens reads them. Text-only records are skipped (there are no image
positions to analyse). Records are drawn in a seeded random order, lazily, so only the
samples actually analysed are loaded.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from pathlib import Path

import torch

from dpvr.validation import check_image, open_image, read_records, resolve_inside, validate_training_record

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
IMAGE_PLACEHOLDER = "<image>"


def load_records(path: str | Path) -> list[dict]:
    """Read LLaVA conversation records (a JSON list, or JSON Lines), each checked against the schema."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} not found")
    return [validate_training_record(rec, f"{path}: record {i}")
            for i, rec in enumerate(read_records(path, "LLaVA conversation file"))]


def record_images(record: dict) -> list[str]:
    img = record.get("image")
    if img is None:
        return []
    return [img] if isinstance(img, str) else list(img)


def to_messages(record: dict, index: int = 0) -> list[dict]:
    """LLaVA ``conversations`` -> chat messages, image slots first in the turn that had ``<image>``."""
    conv = record.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise ValueError(f"record {record.get('id', index)!r} has no 'conversations' list")
    messages = []
    for turn in conv:
        if not isinstance(turn, dict) or "value" not in turn or turn.get("from") not in ROLES:
            raise ValueError(f"record {record.get('id', index)!r}: each turn needs 'from' (human/gpt) and "
                             f"'value', got {turn!r}")
        value = str(turn["value"])
        n_img = value.count(IMAGE_PLACEHOLDER)
        text = value.replace(IMAGE_PLACEHOLDER, "").strip()
        content = [{"type": "image"}] * n_img + [{"type": "text", "text": text}]
        messages.append({"role": ROLES[turn["from"]], "content": content})
    return messages


def _render(processor, messages, add_generation_prompt: bool) -> str:
    owner = processor if getattr(processor, "chat_template", None) else getattr(processor, "tokenizer", processor)
    return owner.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def encode_record(record: dict, processor, image_folder: str | Path, image_token_id: int, index: int = 0,
                  allow_outside_paths: bool = False) -> dict:
    """Tokenise one record with its images: ``input_ids`` (L,), ``pixel_values``, ``answer_mask`` (L,)."""
    rid = record.get("id", index)
    names = record_images(record)
    messages = to_messages(record, index)
    n_slots = sum(c.get("type") == "image" for m in messages for c in m["content"])
    if n_slots != len(names):
        raise ValueError(f"record {rid!r} names {len(names)} image(s) but has {n_slots} <image> placeholder(s)")
    images = []
    for name in names:
        path = resolve_inside(image_folder, name, f"record {rid!r}", allow_outside_paths)
        if not path.is_file():
            raise FileNotFoundError(f"image {path} of record {rid!r} not found (check --image-folder)")
        images.append(open_image(path, f"record {rid!r}"))
    text = _render(processor, messages, add_generation_prompt=False)
    enc = processor(images=images or None, text=text, return_tensors="pt")
    ids = enc["input_ids"][0]
    answer_mask = _answer_mask_from_labels(record, processor, ids, image_token_id, len(names))
    if answer_mask is None:
        answer_mask = _answer_mask_from_template(record, processor, ids, image_token_id, images)
    if answer_mask is None:
        answer_mask = _answer_mask(processor, messages, text, ids, image_token_id)
    sample = {"id": rid, "input_ids": ids, "pixel_values": enc.get("pixel_values"), "answer_mask": answer_mask}
    if enc.get("image_sizes") is not None:  # LLaVA-NeXT-style processors
        sample["image_sizes"] = enc["image_sizes"]
    # Every other processor output the family's forward needs (image_grid_thw, mm_token_type_ids, ...).
    sample["extra"] = {k: v for k, v in enc.items()
                       if torch.is_tensor(v) and k not in ("input_ids", "attention_mask", "pixel_values", "image_sizes")}
    return sample


def _answer_mask_from_template(record, processor, ids, image_token_id: int, images=None):
    """Answer positions from the family-agnostic training tokenisation (`dpvr.train.family_data`), or None."""
    from dpvr.train.family_data import encode_supervised, supervised_tokens

    try:
        text, _, spans = supervised_tokens(record, processor)
        enc, labels = encode_supervised(processor, text, spans, images or None, {image_token_id})
    except (ValueError, TypeError, KeyError):
        return None
    if enc["input_ids"][0].tolist() != ids.tolist():
        return None
    labels = torch.tensor(labels)
    mask = torch.zeros(len(ids), dtype=torch.bool)
    mask[:-1] = labels[1:] != -100  # position p predicts token p+1
    return mask


def _answer_mask_from_labels(record, processor, ids, image_token_id: int, n_images: int):
    """Answer positions from the training tokenisation (``dpvr.data.llava_format``), when it applies.

    Used only if it reproduces the processor's ``input_ids`` exactly; ``None`` otherwise.
    """
    try:
        from dpvr.data.llava_format import tokenize_conversation
    except ImportError:
        return None
    n_tok = int((ids == image_token_id).sum())
    template = getattr(processor, "chat_template", None) or getattr(getattr(processor, "tokenizer", None),
                                                                      "chat_template", None) or ""
    if not re.search(r"{%-?\s*generation\s*-?%}", template):  # not a template with {% generation %} markers (e.g. Qwen's)
        return None
    if n_images == 0 or n_tok % n_images:
        return None
    try:
        ex = tokenize_conversation(record, getattr(processor, "tokenizer", processor), n_tok // n_images)
    except (ValueError, TypeError, KeyError):
        return None
    if ex["input_ids"] != ids.tolist():
        return None
    labels = torch.tensor(ex["labels"])
    mask = torch.zeros(len(ids), dtype=torch.bool)
    mask[:-1] = labels[1:] != -100  # position p predicts token p+1
    return mask


def _answer_mask(processor, messages, text, ids: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """Positions whose next token is an assistant-answer token (all False if it cannot be found).

    Answer spans are located on the unexpanded token sequence by rendering the conversation up
    to each assistant turn, then mapped onto ``ids`` by expanding each image token to its run.
    """
    tok = getattr(processor, "tokenizer", processor)
    unexpanded = tok(text)["input_ids"]
    is_answer = [False] * len(unexpanded)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(tok(_render(processor, messages[:i], add_generation_prompt=True))["input_ids"])
        end = len(tok(_render(processor, messages[:i + 1], add_generation_prompt=False))["input_ids"])
        for j in range(start, min(end, len(unexpanded))):
            is_answer[j] = True
    n_ph = sum(t == image_token_id for t in unexpanded)
    n_exp = int((ids == image_token_id).sum())
    run = n_exp // n_ph if n_ph else 0
    mask = torch.zeros(len(ids), dtype=torch.bool)
    k = 0
    for j, t in enumerate(unexpanded):
        if k >= len(ids) or int(ids[k]) != t:
            return torch.zeros(len(ids), dtype=torch.bool)  # tokenisations disagree: use the last position
        if t == image_token_id:
            k += run
            continue
        if is_answer[j] and k > 0:
            mask[k - 1] = True  # position k-1 predicts answer token k
        k += 1
    return mask


def select_records(records: list[dict], num_samples: int, seed: int = 0) -> tuple[list[tuple[int, dict]], dict]:
    """Up to ``num_samples`` records with at least one image, in a seeded random order.

    Returns ``[(index, record), ...]`` and counts (``read``, ``skipped_text_only``). Raises a
    ``ValueError`` when no record has an image.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    chosen, counts = [], {"read": 0, "skipped_text_only": 0}
    for i in order:
        if len(chosen) >= num_samples:
            break
        rec = records[i]
        if not isinstance(rec, dict):
            raise ValueError(f"record {i} is not a JSON object: {rec!r:.80}")
        counts["read"] += 1
        if not record_images(rec):
            counts["skipped_text_only"] += 1
            continue
        chosen.append((i, rec))
    if not chosen:
        raise ValueError(f"no usable samples: {counts['read']} record(s) read, {counts['skipped_text_only']} "
                         "text-only (the analysis needs records with an image)")
    return chosen, counts


def check_images(chosen: list[tuple[int, dict]], image_folder: str | Path, allow_outside_paths: bool = False) -> None:
    """Fail early (before a model is loaded) if an image of a chosen record is missing, outside the image
    folder (unless allowed) or not a readable image within Pillow's pixel limit (header only)."""
    for i, rec in chosen:
        for name in record_images(rec):
            where = f"record {rec.get('id', i)!r}"
            path = resolve_inside(image_folder, name, where, allow_outside_paths)
            if not path.is_file():
                raise FileNotFoundError(f"image {path} of {where} not found (check --image-folder)")
            check_image(path, where)


def iter_samples(chosen: list[tuple[int, dict]], processor, image_folder: str | Path,
                 image_token_id: int, allow_outside_paths: bool = False) -> Iterator[dict]:
    """Encode the chosen records lazily, one at a time."""
    for i, rec in chosen:
        yield encode_record(rec, processor, image_folder, image_token_id, i, allow_outside_paths)
