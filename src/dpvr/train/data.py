"""LLaVA conversation data for training: records, image folder, tokenisation, padding.

Records follow LLaVA-665k: ``{"id", "image" (optional), "conversations": [{"from": "human"|"gpt",
"value"}]}`` with ``<image>`` in a human turn, as a JSON list or JSON Lines. Every record is
tokenised up front, so a bad one (missing image, no assistant turn, too long, malformed) is
reported by id before training starts — or skipped and counted with ``skip_bad=True``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from dpvr.data.llava_format import IGNORE_INDEX, tokenize_conversation
from dpvr.validation import (BadInput, check_image, open_image, read_records, resolve_inside,
                             validate_training_record)

log = logging.getLogger(__name__)


def load_records(path: str | Path, skip_bad: bool = False, skipped: dict | None = None) -> list[dict]:
    """Read a LLaVA conversation file (JSON list, or JSON Lines), every record checked against the schema.

    Errors name the line or the record's index, id and field (:class:`dpvr.validation.BadInput`). With
    ``skip_bad`` a record that fails the schema is left out and its message kept in ``skipped``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist; pass --data with a LLaVA conversation JSON")
    records = []
    for i, rec in enumerate(read_records(path, "LLaVA conversation file")):
        try:
            records.append(validate_training_record(rec, f"{path}: record {i}"))
        except BadInput as err:
            if not skip_bad:
                raise
            if skipped is not None:
                skipped[f"record {i}"] = str(err)
    if not records:
        raise BadInput(f"{path} holds no usable records")
    return records


def num_image_tokens(model_config) -> int:
    """Image tokens per image, from the vision config and the feature-select strategy."""
    vision = model_config.vision_config
    n = (vision.image_size // vision.patch_size) ** 2
    return n + (1 if getattr(model_config, "vision_feature_select_strategy", "default") == "full" else 0)


def _longest_token(tokenizer) -> int:
    """Characters of the longest vocabulary entry: a text longer than ``max_length`` times this cannot fit."""
    return max((len(t) for t in tokenizer.get_vocab()), default=1) or 1


def check_record(rec: dict, index: int, image_folder: Path | None, allow_outside_paths: bool = False,
                 max_chars: int | None = None, max_length: int | None = None) -> tuple[str, Path | None]:
    """(id, image path or None) of a training record, or one :class:`BadInput` line saying what is wrong.

    The schema, one image per record, the image inside ``image_folder`` (unless ``allow_outside_paths``)
    and readable, exactly one ``<image>`` placeholder with it and none without, and at most ``max_chars``
    characters (a text that certainly cannot fit ``max_length`` tokens is refused before tokenising).
    """
    validate_training_record(rec, f"record {index}")
    rid = str(rec.get("id", index))
    image = rec.get("image")
    path = None
    if isinstance(image, list):
        raise BadInput(f"record {rid!r} has {len(image)} images; training takes one image per record")
    if image is not None:
        if image_folder is None:
            raise BadInput(f"record {rid!r} has an image but no --image-folder was given")
        path = resolve_inside(image_folder, image, f"record {rid!r}", allow_outside_paths)
        if not path.is_file():
            raise FileNotFoundError(f"record {rid!r}: image {path} does not exist")
        check_image(path, f"record {rid!r}")
    n_placeholders = sum(t["value"].count("<image>") for t in rec["conversations"])
    if image is not None and n_placeholders != 1:
        raise BadInput(f"record {rid!r} has an image but {n_placeholders} '<image>' placeholders (need 1)")
    if image is None and n_placeholders:
        raise BadInput(f"record {rid!r} has '<image>' in its text but no 'image' field")
    chars = sum(len(t["value"]) for t in rec["conversations"])
    if max_chars is not None and chars > max_chars:  # certainly too long: no need to tokenise
        raise BadInput(f"record {rid!r} has {chars:,} characters, more than {max_length} tokens can hold; "
                       "shorten it or pass --skip-bad to drop such records")
    return rid, path


@dataclass
class Example:
    id: str
    input_ids: list[int]
    labels: list[int]
    image: str | None  # path of the image file (inside the image folder unless allowed otherwise)


class LlavaConversationDataset(torch.utils.data.Dataset):
    """Tokenised LLaVA conversations with their images (loaded lazily, through the image processor)."""

    def __init__(self, records: list[dict], image_folder: str | Path | None, processor, image_tokens: int,
                 max_length: int | None = None, skip_bad: bool = False, allow_outside_paths: bool = False):
        self.processor = processor
        self.image_folder = Path(image_folder) if image_folder is not None else None
        self.allow_outside_paths = allow_outside_paths
        self.examples: list[Example] = []
        self.skipped: dict[str, str] = {}
        self._max_chars = None if max_length is None else max_length * _longest_token(processor.tokenizer)
        for i, rec in enumerate(records):
            try:
                self.examples.append(self._prepare(rec, image_tokens, max_length, i))
            except (ValueError, FileNotFoundError) as err:
                if not skip_bad:
                    raise
                self.skipped[str(rec.get("id", i)) if isinstance(rec, dict) else str(i)] = str(err)
        if self.skipped:
            log.warning("skipped %d bad record(s) of %d; first: %s", len(self.skipped), len(records),
                        next(iter(self.skipped.values())))
        if not self.examples:
            skipped = f" ({len(self.skipped)} skipped as bad)" if self.skipped else ""
            raise BadInput(f"no usable training records{skipped}")

    def _prepare(self, rec: dict, image_tokens: int, max_length: int | None, index: int = 0) -> Example:
        rid, path = check_record(rec, index, self.image_folder, self.allow_outside_paths, self._max_chars, max_length)
        tok = tokenize_conversation(rec, self.processor.tokenizer, num_image_tokens=image_tokens)
        if max_length is not None and len(tok["input_ids"]) > max_length:
            raise BadInput(f"record {rid!r} is {len(tok['input_ids'])} tokens, longer than the model's "
                           f"max length {max_length}; shorten it or pass --skip-bad to drop such records")
        return Example(rid, tok["input_ids"], tok["labels"], None if path is None else str(path))

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        ex = self.examples[i]
        item = {"input_ids": torch.tensor(ex.input_ids), "labels": torch.tensor(ex.labels)}
        if ex.image is not None:
            img = open_image(ex.image, f"record {ex.id!r}")
            pixels = self.processor.image_processor(img, return_tensors="pt")["pixel_values"]
            item["pixel_values"] = pixels  # (1, 3, H, W)
        return item


#: Processor outputs with one value per token (padded like ``input_ids``); the rest are per image/video.
TOKEN_KEYS = ("mm_token_type_ids", "token_type_ids")


def _cat_padded(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate along dim 0, zero-padding every other dimension to the largest (AnyRes tile counts)."""
    shape = [max(p.shape[d] for p in parts) for d in range(1, parts[0].dim())]
    padded = []
    for p in parts:
        pad = []
        for d in reversed(range(1, p.dim())):
            pad += [0, shape[d - 1] - p.shape[d]]
        padded.append(torch.nn.functional.pad(p, pad) if any(pad) else p)
    return torch.cat(padded, dim=0)


@dataclass
class DataCollator:
    """Right-pads ``input_ids``/``labels`` and the per-token processor outputs (``TOKEN_KEYS``); concatenates the
    per-image ones (``pixel_values``, ``image_grid_thw``, ``image_sizes``, ...) in sample order, zero-padding
    ragged trailing dimensions. The one collator of every family (LLaVA-1.5 items carry only ``pixel_values``)."""

    pad_token_id: int

    def __call__(self, items: list[dict]) -> dict:
        width = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for i, it in enumerate(items):
            n = len(it["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = it["input_ids"], it["labels"], 1
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        for key in [k for k in dict.fromkeys(k for it in items for k in it) if k not in batch]:
            if key in TOKEN_KEYS:
                out = torch.zeros((len(items), width), dtype=torch.long)
                for i, it in enumerate(items):
                    if key in it:
                        out[i, : len(it[key])] = it[key]
                batch[key] = out
            else:
                batch[key] = _cat_padded([it[key] for it in items if key in it])  # e.g. (n_images, 3, H, W)
        return batch
