"""LLaVA conversation records -> chat messages -> supervised token sequences.

A record is LLaVA's training format::

    {"id": ..., "image": "images/x.png",
     "conversations": [{"from": "human", "value": "<image>\\nQuestion?"}, {"from": "gpt", "value": "Answer"}, ...]}

:func:`tokenize_conversation` applies the tokenizer's chat template and returns ``input_ids``
with the image placeholder expanded to ``num_image_tokens`` image tokens, and ``labels`` that
are -100 everywhere except on the assistant responses and their end-of-turn token.

    from dpvr.data.llava_format import tokenize_conversation
    ex = tokenize_conversation(record, processor.tokenizer, num_image_tokens=64)
"""

from __future__ import annotations

IGNORE_INDEX = -100
IMAGE_PLACEHOLDER = "<image>"
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def record_to_messages(record: dict, image_placeholder: str = IMAGE_PLACEHOLDER) -> list[dict]:
    """Chat-template messages for a LLaVA record; ``<image>`` becomes an image content entry."""
    conv = record.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise ValueError(f"record {record.get('id', '?')!r} has no 'conversations' list")
    messages = []
    for turn in conv:
        role = _ROLES.get(turn.get("from"))
        if role is None:
            raise ValueError(f"record {record.get('id', '?')!r}: unknown speaker {turn.get('from')!r} "
                             f"(expected one of {sorted(_ROLES)})")
        value = turn.get("value", "")
        if role == "user" and image_placeholder in value:
            text = value.replace(image_placeholder, "").strip("\n")
            content = [{"type": "image"}] * value.count(image_placeholder) + [{"type": "text", "text": text}]
        else:
            content = [{"type": "text", "text": value}]
        messages.append({"role": role, "content": content})
    return messages


def tokenize_conversation(record: dict, tokenizer, num_image_tokens: int, image_token: str = IMAGE_PLACEHOLDER,
                          max_length: int | None = None) -> dict[str, list[int]]:
    """Token ids and labels of one LLaVA record, using ``tokenizer``'s chat template.

    The template must mark assistant text with ``{% generation %}`` (LLaVA-1.5's template in
    this package does). Labels keep the tokens that overlap an assistant response (the answer
    and its ``</s>``); everything else, image tokens included, is ``-100``. Each image placeholder
    token is expanded to ``num_image_tokens`` copies. A sequence longer than ``max_length`` is
    cut at the end of the last complete assistant turn that fits (``ValueError`` if none fits).
    """
    messages = record_to_messages(record, image_token)
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    ids, amask = list(out["input_ids"]), list(out["assistant_masks"])
    if not any(amask):
        raise ValueError(f"record {record.get('id', '?')!r}: no assistant tokens (does the chat template "
                         "mark responses with {% generation %}?)")
    image_id = tokenizer.convert_tokens_to_ids(image_token)
    n_images = sum(m["content"][0].get("type") == "image" for m in messages if m["role"] == "user")
    if ids.count(image_id) != n_images:
        raise ValueError(f"record {record.get('id', '?')!r}: {n_images} image placeholder(s) but "
                         f"{ids.count(image_id)} image tokens after templating")
    input_ids: list[int] = []
    labels: list[int] = []
    for tok, m in zip(ids, amask):
        if tok == image_id:
            input_ids += [image_id] * num_image_tokens
            labels += [IGNORE_INDEX] * num_image_tokens
        else:
            input_ids.append(tok)
            labels.append(tok if m else IGNORE_INDEX)
    if max_length is not None and len(input_ids) > max_length:
        eos = tokenizer.eos_token_id
        ends = [i + 1 for i in range(max_length) if labels[i] == eos]
        if not ends:
            raise ValueError(f"record {record.get('id', '?')!r}: no complete assistant turn within "
                             f"max_length={max_length}")
        input_ids, labels = input_ids[: ends[-1]], labels[: ends[-1]]
    return {"input_ids": input_ids, "labels": labels}
