"""LLaVA conversation data for training: records, image folder, tokenisation, padding.

Records follow LLaVA-665k: ``{"id", "image" (optional), "conversations": [{"from": "human"|"gpt",
"value"}]}`` with ``<image>`` in a human turn, as a JSON list or JSON Lines. Every record is
tokenised up front, so a bad one (missing image, no assistant turn, too long, malformed) is
reported by id before training starts — or skipped and counted with ``skip_bad=True``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from dpvr.data.llava_format import IGNORE_INDEX, tokenize_conversation

log = logging.getLogger(__name__)


def load_records(path: str | Path) -> list[dict]:
    """Read a LLaVA conversation file (JSON list, or JSON Lines); errors name the line or record."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist; pass --data with a LLaVA conversation JSON")
    text = path.read_text()
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}") from err
    else:
        records = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {lineno}: not a JSON record ({err.msg})") from err
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or "conversations" not in rec:
            raise ValueError(f"{path}: record {i} (id {rec.get('id', '?') if isinstance(rec, dict) else '?'}) "
                             "is not a LLaVA conversation (needs 'conversations')")
    if not records:
        raise ValueError(f"{path} holds no records")
    return records


def num_image_tokens(model_config) -> int:
    """Image tokens per image, from the vision config and the feature-select strategy."""
    vision = model_config.vision_config
    n = (vision.image_size // vision.patch_size) ** 2
    return n + (1 if getattr(model_config, "vision_feature_select_strategy", "default") == "full" else 0)


@dataclass
class Example:
    id: str
    input_ids: list[int]
    labels: list[int]
    image: str | None


class LlavaConversationDataset(torch.utils.data.Dataset):
    """Tokenised LLaVA conversations with their images (loaded lazily, through the image processor)."""

    def __init__(self, records: list[dict], image_folder: str | Path | None, processor, image_tokens: int,
                 max_length: int | None = None, skip_bad: bool = False):
        self.processor = processor
        self.image_folder = Path(image_folder) if image_folder is not None else None
        self.examples: list[Example] = []
        self.skipped: dict[str, str] = {}
        for rec in records:
            try:
                self.examples.append(self._prepare(rec, image_tokens, max_length))
            except (ValueError, FileNotFoundError) as err:
                if not skip_bad:
                    raise
                self.skipped[str(rec.get("id", "?"))] = str(err)
        if self.skipped:
            log.warning("skipped %d bad record(s) of %d; first: %s", len(self.skipped), len(records),
                        next(iter(self.skipped.values())))
        if not self.examples:
            raise ValueError("no usable training records")

    def _prepare(self, rec: dict, image_tokens: int, max_length: int | None) -> Example:
        rid = str(rec.get("id", "?"))
        image = rec.get("image")
        if image is not None:
            if self.image_folder is None:
                raise ValueError(f"record {rid!r} has an image but no --image-folder was given")
            if not (self.image_folder / image).is_file():
                raise FileNotFoundError(f"record {rid!r}: image {self.image_folder / image} does not exist")
        n_placeholders = sum(t.get("value", "").count("<image>") for t in rec["conversations"])
        if image is not None and n_placeholders != 1:
            raise ValueError(f"record {rid!r} has an image but {n_placeholders} '<image>' placeholders (need 1)")
        if image is None and n_placeholders:
            raise ValueError(f"record {rid!r} has '<image>' in its text but no 'image' field")
        tok = tokenize_conversation(rec, self.processor.tokenizer, num_image_tokens=image_tokens)
        if max_length is not None and len(tok["input_ids"]) > max_length:
            raise ValueError(f"record {rid!r} is {len(tok['input_ids'])} tokens, longer than the model's "
                             f"max length {max_length}; shorten it or pass --skip-bad to drop such records")
        return Example(rid, tok["input_ids"], tok["labels"], image)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        ex = self.examples[i]
        item = {"input_ids": torch.tensor(ex.input_ids), "labels": torch.tensor(ex.labels)}
        if ex.image is not None:
            with Image.open(self.image_folder / ex.image) as img:
                pixels = self.processor.image_processor(img.convert("RGB"), return_tensors="pt")["pixel_values"]
            item["pixel_values"] = pixels  # (1, 3, H, W)
        return item


@dataclass
class DataCollator:
    """Right-pads input_ids/labels; stacks the images of the batch in sample order."""

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
        images = [it["pixel_values"] for it in items if "pixel_values" in it]
        if images:
            batch["pixel_values"] = torch.cat(images, dim=0)  # (n_images, 3, H, W)
        return batch
