"""Training data for any supported family: the family's own chat template and processor expand the images.

LLaVA-1.5 has a fixed number of image tokens per image, and `dpvr.train.data` expands ``<image>``
to that count itself. Other families do not: Qwen2-VL's count follows the image's size
(``image_grid_thw``), LLaVA-NeXT's AnyRes tiling too. So here each record is

1. rendered once with the processor's chat template and tokenised *unexpanded* (one placeholder
   token per image), with labels on the assistant responses found by rendering the conversation
   up to each assistant turn (works with any template, ``{% generation %}`` markers or not);
2. at load time run through the processor with its image, which expands the placeholders and
   returns every tensor the family needs (``pixel_values``, ``image_grid_thw``, ``image_sizes``,
   ``mm_token_type_ids``, ...); the labels are carried over to the expanded sequence (-100 on
   every visual token).

:class:`FamilyDataCollator` right-pads the per-token tensors and concatenates the per-image ones
(zero-padding ragged trailing dimensions, e.g. AnyRes tile counts), in sample order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from dpvr.data.llava_format import IGNORE_INDEX, record_to_messages

log = logging.getLogger(__name__)

#: Processor outputs with one value per token (padded like ``input_ids``); the rest are per image/video.
TOKEN_KEYS = ("mm_token_type_ids", "token_type_ids")


def _tokenizer(processor):
    return getattr(processor, "tokenizer", processor)


def _render(processor, messages: list[dict], add_generation_prompt: bool) -> str:
    owner = processor if getattr(processor, "chat_template", None) else _tokenizer(processor)
    if not getattr(owner, "chat_template", None):
        raise ValueError("the model's processor has no chat template: save one with the model (chat_template.jinja)")
    return owner.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _ids(processor, text: str) -> list[int]:
    return list(_tokenizer(processor)(text)["input_ids"])


def supervised_tokens(record: dict, processor) -> tuple[str, list[int], list[int]]:
    """(rendered text, unexpanded ids, labels): labels are the ids of the assistant responses, -100 elsewhere.

    Each assistant turn's tokens are those between the conversation rendered up to its generation
    prompt and the conversation rendered up to its end (its end-of-turn tokens included).
    """
    rid = record.get("id", "?")
    messages = record_to_messages(record)
    text = _render(processor, messages, add_generation_prompt=False)
    ids = _ids(processor, text)
    labels = [IGNORE_INDEX] * len(ids)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(_ids(processor, _render(processor, messages[:i], add_generation_prompt=True)))
        upto = _ids(processor, _render(processor, messages[: i + 1], add_generation_prompt=False))
        if ids[: len(upto)] != upto or start > len(upto):
            raise ValueError(f"record {rid!r}: the chat template's tokens of a conversation prefix differ from "
                             "the full conversation's; cannot find the assistant tokens")
        labels[start: len(upto)] = ids[start: len(upto)]
    if all(lab == IGNORE_INDEX for lab in labels):
        raise ValueError(f"record {rid!r}: no assistant tokens (no 'gpt' turn with text?)")
    return text, ids, labels


def expand_labels(ids: list[int], labels: list[int], expanded: list[int], visual: set[int], rid="?") -> list[int]:
    """``labels`` of the unexpanded ``ids`` carried over to the processor's ``expanded`` ids (-100 on visual runs)."""
    out: list[int] = []
    j = 0
    for t, lab in zip(ids, labels):
        if t in visual:  # one placeholder -> the run of visual tokens the processor put there
            start = j
            while j < len(expanded) and expanded[j] in visual:
                j += 1
            out += [IGNORE_INDEX] * (j - start)
            continue
        if j >= len(expanded) or expanded[j] != t:
            raise ValueError(f"record {rid!r}: the processor's tokens differ from the chat template's beyond the "
                             "image placeholders; cannot place the labels")
        out.append(lab)
        j += 1
    if j != len(expanded):
        raise ValueError(f"record {rid!r}: the processor added {len(expanded) - j} token(s) the chat template has not")
    return out


def image_token_count(processor, image_path: Path) -> int | None:
    """Visual tokens the processor will give this image (from its size alone), or None if it cannot say."""
    count = getattr(processor, "_get_num_multimodal_tokens", None)
    if count is None:
        return None
    try:
        with Image.open(image_path) as im:
            h, w = im.height, im.width
        n = count(image_sizes=[(h, w)]).get("num_image_tokens")
        return int(n[0]) if n else None
    except (TypeError, ValueError, KeyError, AttributeError, NotImplementedError, OSError):
        return None


@dataclass
class FamilyExample:
    id: str
    text: str
    input_ids: list[int]  # unexpanded: one placeholder token per image
    labels: list[int]
    image: str | None


class ProcessorConversationDataset(torch.utils.data.Dataset):
    """LLaVA conversation records for a model of any family, through its own processor (see the module doc)."""

    def __init__(self, records: list[dict], image_folder: str | Path | None, processor, visual_token_ids,
                 max_length: int | None = None, skip_bad: bool = False):
        self.processor = processor
        self.image_folder = Path(image_folder) if image_folder is not None else None
        self.visual = set(int(i) for i in visual_token_ids)
        tok = _tokenizer(processor)
        image_token = getattr(processor, "image_token", None)
        self.image_token_id = tok.convert_tokens_to_ids(image_token) if image_token else None
        self.examples: list[FamilyExample] = []
        self.skipped: dict[str, str] = {}
        for rec in records:
            try:
                self.examples.append(self._prepare(rec, max_length))
            except (ValueError, FileNotFoundError) as err:
                if not skip_bad:
                    raise
                self.skipped[str(rec.get("id", "?"))] = str(err)
        if self.skipped:
            log.warning("skipped %d bad record(s) of %d; first: %s", len(self.skipped), len(records),
                        next(iter(self.skipped.values())))
        if not self.examples:
            raise ValueError("no usable training records")

    def _prepare(self, rec: dict, max_length: int | None) -> FamilyExample:
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
        text, ids, labels = supervised_tokens(rec, self.processor)
        if self.image_token_id is not None and ids.count(self.image_token_id) != n_placeholders:
            raise ValueError(f"record {rid!r}: {n_placeholders} image placeholder(s) but "
                             f"{ids.count(self.image_token_id)} image tokens after the chat template")
        if max_length is not None:
            n = len(ids)
            if image is not None:
                per_image = image_token_count(self.processor, self.image_folder / image)
                n += (per_image - 1) if per_image else 0
            if n > max_length:
                raise ValueError(f"record {rid!r} is {n} tokens, longer than the model's max length {max_length}; "
                                 "shorten it or pass --skip-bad to drop such records")
        return FamilyExample(rid, text, ids, labels, image)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        ex = self.examples[i]
        images = None
        if ex.image is not None:
            with Image.open(self.image_folder / ex.image) as img:
                images = [img.convert("RGB")]
        enc = self.processor(images=images, text=[ex.text], return_tensors="pt")
        expanded = enc["input_ids"][0].tolist()
        labels = expand_labels(ex.input_ids, ex.labels, expanded, self.visual, ex.id)
        item = {"input_ids": torch.tensor(expanded), "labels": torch.tensor(labels)}
        for key, value in enc.items():
            if key in ("input_ids", "attention_mask") or not torch.is_tensor(value):
                continue
            item[key] = value[0] if key in TOKEN_KEYS else value
        return item


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
class FamilyDataCollator:
    """Right-pads ``input_ids``/``labels`` and the per-token processor outputs; concatenates the per-image ones."""

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
        keys = [k for k in dict.fromkeys(k for it in items for k in it) if k not in batch]
        for key in keys:
            if key in TOKEN_KEYS:
                out = torch.zeros((len(items), width), dtype=torch.long)
                for i, it in enumerate(items):
                    if key in it:
                        out[i, : len(it[key])] = it[key]
                batch[key] = out
            else:
                batch[key] = _cat_padded([it[key] for it in items if key in it])
        return batch
