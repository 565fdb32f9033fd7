"""Training data for any supported family: the family's own chat template and processor expand the images.

LLaVA-1.5 has a fixed number of image tokens per image, and `dpvr.train.data` expands ``<image>``
to that count itself. Other families do not: Qwen2-VL's count follows the image's size
(``image_grid_thw``), LLaVA-NeXT's AnyRes tiling too. So here each record is

1. checked as `dpvr.train.data` checks every record (one line per bad one), rendered once with the
   processor's chat template, and the characters of each assistant response (its end-of-turn text
   included) found by rendering the conversation up to that turn with and without its answer
   (works with any template, ``{% generation %}`` markers or not);
2. at load time run through the processor with its image, which expands the placeholders (Gemma 3
   and InternVL wrap them in text such as ``<start_of_image>``/``<img>``, Idefics3 adds row/column
   tags, Pixtral row breaks) and returns every tensor the family needs (``pixel_values``,
   ``image_grid_thw``, ``image_sizes``, ``mm_token_type_ids``, ...); the labels are the tokens of
   the expanded text that overlap an assistant span, moved past every replacement before it (the
   rule of transformers' ``return_assistant_tokens_mask``), -100 on every visual token.

Batches are made by `dpvr.train.data.DataCollator`, the one collator of every family.
"""

from __future__ import annotations

import bisect
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from dpvr.data.llava_format import IGNORE_INDEX, record_to_messages
from dpvr.train.data import TOKEN_KEYS, DataCollator, _longest_token, check_record
from dpvr.validation import BadInput, open_image

log = logging.getLogger(__name__)


def _tokenizer(processor):
    return getattr(processor, "tokenizer", processor)


def _render(processor, messages: list[dict], add_generation_prompt: bool) -> str:
    owner = processor if getattr(processor, "chat_template", None) else _tokenizer(processor)
    if not getattr(owner, "chat_template", None):
        raise ValueError("the model's processor has no chat template: save one with the model (chat_template.jinja)")
    return owner.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _ids(processor, text: str) -> list[int]:
    return list(_tokenizer(processor)(text)["input_ids"])


def _char_span(processor, messages: list[dict], i: int, text: str, rid) -> tuple[int, int]:
    """(start, end) characters of assistant turn ``i`` in ``text``: from where the conversation rendered with an
    empty answer departs from it rendered with the answer, to the end of the latter (its end-of-turn text
    included). Works whatever the template puts between the role and the answer (a generation prompt need not
    be a prefix of the rendered turn: LLaVA-OneVision's is not)."""
    upto = _render(processor, messages[: i + 1], add_generation_prompt=False)
    empty = [*messages[:i], {**messages[i], "content": [{"type": "text", "text": ""}]}]
    blank = _render(processor, empty, add_generation_prompt=False)
    if not text.startswith(upto):
        raise ValueError(f"record {rid!r}: the chat template renders a conversation prefix differently from the "
                         "full conversation; cannot find the assistant tokens")
    start = len(os.path.commonprefix([blank, upto]))
    return start, len(upto)


def supervised_tokens(record: dict, processor) -> tuple[str, list[int], list[tuple[int, int]]]:
    """(rendered text, unexpanded ids, assistant character spans of the text).

    The spans (one per assistant turn, end-of-turn text included) are found on the rendered text, so
    they hold whatever the processor later puts in place of the image placeholders (see `expand_labels`).
    """
    rid = record.get("id", "?")
    messages = record_to_messages(record)
    text = _render(processor, messages, add_generation_prompt=False)
    spans = [_char_span(processor, messages, i, text, rid) for i, m in enumerate(messages) if m["role"] == "assistant"]
    spans = [(a, b) for a, b in spans if b > a]
    if not spans:
        raise ValueError(f"record {rid!r}: no assistant tokens (no 'gpt' turn with text?)")
    return text, _ids(processor, text), spans


def expand_labels(expanded: list[int], offsets, replacements: list[dict], spans: list[tuple[int, int]],
                  visual: set[int]) -> list[int]:
    """Labels of the processor's ``expanded`` ids: the id where the token overlaps an assistant span, -100 elsewhere.

    ``offsets`` are the tokens' character offsets in the expanded text and ``replacements`` the processor's
    placeholder replacements (``return_text_replacement_offsets``); an assistant span of the unexpanded text
    moves by the characters every replacement before it added — the rule transformers' own
    ``return_assistant_tokens_mask`` uses. Visual tokens are never labels.
    """
    ends = [r["span"][1] for r in replacements]
    gained = [0]
    for r in replacements:
        gained.append(r["new_span"][1] - r["span"][1])
    moved = [tuple(c + gained[bisect.bisect_right(ends, c)] for c in span) for span in spans]
    labels = [IGNORE_INDEX] * len(expanded)
    for pos, ((a, b), tok) in enumerate(zip(offsets, expanded)):
        if tok not in visual and any(a < end and b > start for start, end in moved):
            labels[pos] = tok
    return labels


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


def encode_supervised(processor, text: str, spans: list[tuple[int, int]], images, visual: set[int]) -> tuple[dict, list[int]]:
    """The processor's outputs for ``text`` with its ``images`` (offset bookkeeping removed), and the labels of its
    expanded ids (`expand_labels`)."""
    enc = processor(images=images, text=[text], return_tensors="pt", return_offsets_mapping=True,
                    return_text_replacement_offsets=True)
    offsets = enc.pop("offset_mapping")[0].tolist()  # (L, 2) characters of each token in the expanded text
    replacements = enc.pop("text_replacement_offsets", None) or [[]]
    expanded = enc["input_ids"][0].tolist()
    return enc, expand_labels(expanded, offsets, replacements[0], spans, visual)


@dataclass
class FamilyExample:
    id: str
    text: str
    input_ids: list[int]  # unexpanded: one placeholder token per image
    spans: list[tuple[int, int]]  # characters of the assistant turns in ``text``
    image: str | None


class ProcessorConversationDataset(torch.utils.data.Dataset):
    """LLaVA conversation records for a model of any family, through its own processor (see the module doc)."""

    def __init__(self, records: list[dict], image_folder: str | Path | None, processor, visual_token_ids,
                 max_length: int | None = None, skip_bad: bool = False, allow_outside_paths: bool = False):
        self.processor = processor
        self.image_folder = Path(image_folder) if image_folder is not None else None
        self.allow_outside_paths = allow_outside_paths
        self.visual = set(int(i) for i in visual_token_ids)
        tok = _tokenizer(processor)
        image_token = getattr(processor, "image_token", None)
        self.image_token_id = tok.convert_tokens_to_ids(image_token) if image_token else None
        self._max_chars = None if max_length is None else max_length * _longest_token(tok)
        self.examples: list[FamilyExample] = []
        self.skipped: dict[str, str] = {}
        for i, rec in enumerate(records):
            try:
                self.examples.append(self._prepare(rec, max_length, i))
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

    def _prepare(self, rec: dict, max_length: int | None, index: int = 0) -> FamilyExample:
        rid, path = check_record(rec, index, self.image_folder, self.allow_outside_paths, self._max_chars, max_length)
        n_placeholders = 0 if path is None else 1
        text, ids, spans = supervised_tokens(rec, self.processor)
        if self.image_token_id is not None and ids.count(self.image_token_id) != n_placeholders:
            raise BadInput(f"record {rid!r}: {n_placeholders} image placeholder(s) but "
                           f"{ids.count(self.image_token_id)} image tokens after the chat template")
        if max_length is not None:
            n = len(ids)
            if path is not None:
                per_image = image_token_count(self.processor, path)
                n += (per_image - 1) if per_image else 0
            if n > max_length:
                raise BadInput(f"record {rid!r} is {n} tokens, longer than the model's max length {max_length}; "
                               "shorten it or pass --skip-bad to drop such records")
        return FamilyExample(rid, text, ids, spans, None if path is None else str(path))

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        ex = self.examples[i]
        images = None if ex.image is None else [open_image(ex.image, f"record {ex.id!r}")]
        enc, labels = encode_supervised(self.processor, ex.text, ex.spans, images, self.visual)
        item = {"input_ids": enc["input_ids"][0], "labels": torch.tensor(labels)}
        for key, value in enc.items():
            if key in ("input_ids", "attention_mask") or not torch.is_tensor(value):
                continue
            item[key] = value[0] if key in TOKEN_KEYS else value
        return item


#: The one collator of every family (`dpvr.train.data.DataCollator`), under the name this module had for it.
FamilyDataCollator = DataCollator
