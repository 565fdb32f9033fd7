"""Batched greedy generation for evaluation, shared by ``dpvr eval`` and the lmms-eval plugin.

    texts = generate(model, processor, [Prompt(messages, images), ...], max_new_tokens=16)

A :class:`Prompt` is a chat (HF message format, ``{"role", "content": [{"type": "image"} |
{"type": "text", "text"}]}``) plus its PIL images in order; it is rendered with the processor's
chat template and tokenised with left padding, and the whole batch decodes with the KV cache
(``DPVRCache`` for routed models). Decoding is greedy, and the image token is suppressed so a
routed model never emits it. The same code path serves vanilla, DPVR, LoRA, full and the peers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from PIL import Image


@dataclass
class Prompt:
    messages: list[dict]
    images: list[Image.Image] = field(default_factory=list)


def user_turn(question: str, num_images: int = 1) -> dict:
    """A user message with ``num_images`` images before the text (LLaVA's layout)."""
    return {"role": "user", "content": [{"type": "image"}] * num_images + [{"type": "text", "text": question}]}


def blank_image(processor=None, color: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """A blank image at the processor's input size (white; ``--blind`` answers from the question alone)."""
    size = 336
    ip = getattr(processor, "image_processor", None)
    budget = getattr(ip, "size", None)
    budget = budget.get("longest_edge") if isinstance(budget, dict) else getattr(budget, "longest_edge", None)
    if getattr(ip, "merge_size", None) and budget:
        # dynamic resolution (Qwen-VL): ``size`` holds pixel counts, not edges; stay inside the budget
        return Image.new("RGB", (min(size, int(budget ** 0.5)),) * 2, color)
    for attr in ("crop_size", "size"):
        value = getattr(ip, attr, None)
        if isinstance(value, dict):
            value = value.get("height") or value.get("shortest_edge")
        if isinstance(value, int) and value > 0:
            size = value
            break
    return Image.new("RGB", (size, size), color)


def render(processor, messages: list[dict]) -> str:
    """The prompt text for ``messages``, ending with the assistant's generation prompt."""
    owner = processor if getattr(processor, "chat_template", None) else getattr(processor, "tokenizer", processor)
    if not getattr(owner, "chat_template", None):
        raise ValueError("the processor has no chat template: save one with the model (processor.chat_template)")
    return owner.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def model_dtype(model) -> torch.dtype:
    return next(p for p in model.parameters() if p.is_floating_point()).dtype


def visual_token_ids(model) -> list[int]:
    """Every visual placeholder id of the model's family (generation must never emit them)."""
    from dpvr.backbones import adapter_class

    config = model.config  # a DPVRModel or a peft model share their base's config
    return adapter_class(config.model_type).visual_ids_of(config)


def encode(processor, prompts: list[Prompt], device=None, dtype=None, texts: list[str] | None = None) -> dict:
    """Left-padded tensors for a batch of prompts (images flattened in order); ``texts`` replaces the rendering."""
    texts = texts if texts is not None else [render(processor, p.messages) for p in prompts]
    images = [im for p in prompts for im in p.images]
    if images and all(p.images for p in prompts):
        images = [list(p.images) for p in prompts]  # one list per prompt: Gemma 3 and Idefics3 count images per sample
    tok = getattr(processor, "tokenizer", processor)
    old = tok.padding_side
    tok.padding_side = "left"
    try:
        enc = processor(images=images or None, text=texts, return_tensors="pt", padding=True)
    finally:
        tok.padding_side = old
    out = {}
    for k, v in enc.items():
        if torch.is_tensor(v):
            v = v.to(device) if device is not None else v
            if v.is_floating_point() and dtype is not None:
                v = v.to(dtype)
        out[k] = v
    return out


@torch.no_grad()
def generate(model, processor, prompts: list[Prompt], max_new_tokens: int = 16, **overrides) -> list[str]:
    """Greedy answers (special tokens and surrounding whitespace stripped) for one batch of prompts.

    ``overrides`` go to ``generate`` as they are (e.g. ``do_sample=True, temperature=0.7`` for a task
    that asks for sampling); by default decoding is greedy.
    """
    if not prompts:
        return []
    tok = getattr(processor, "tokenizer", processor)
    enc = encode(processor, prompts, model_device(model), model_dtype(model))
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, temperature=None, top_p=None,
                  top_k=None, pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                  eos_token_id=tok.eos_token_id)
    kwargs.update(overrides)
    kwargs["suppress_tokens"] = visual_token_ids(model)
    out = model.generate(**enc, **kwargs)
    # The first answer token usually carries the word-separating space (" 1" after "ASSISTANT:"): the
    # answer is the text without it, as predictions files and reports show it.
    return [t.strip() for t in tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)]


def truncate_at(text: str, stops: list[str] | None) -> str:
    """``text`` cut at the first of the ``stops`` strings (lmms-eval's ``until``)."""
    for s in stops or []:
        if s:
            text = text.split(s, 1)[0]
    return text


@torch.no_grad()
def loglikelihoods(model, processor, prompts: list[Prompt], continuations: list[str]) -> list[tuple[float, bool]]:
    """(sum of log-probabilities, whether greedy decoding reproduces it) of each continuation after its prompt.

    The continuation is appended to the rendered prompt (after the assistant's generation prompt)
    and scored in one left-padded forward pass without cache; its tokens are those the full text
    has beyond the prompt's.
    """
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    if not prompts:
        return []
    if getattr(getattr(model, "plan", None), "prune_layer", None) is not None and len(prompts) > 1:
        # FastV ranks image tokens by the prompt's last token (``prompt_len``), one length per sample.
        return [r for p, c in zip(prompts, continuations) for r in loglikelihoods(model, processor, [p], [c])]
    texts = [render(processor, p.messages) for p in prompts]
    lengths = []
    for p, text in zip(prompts, texts):  # prompt length per sample, images expanded as in the full text
        enc = processor(images=p.images or None, text=[text], return_tensors="pt")
        lengths.append(enc["input_ids"].shape[1])
    enc = encode(processor, prompts, model_device(model), model_dtype(model),
                 texts=[t + c for t, c in zip(texts, continuations)])
    extra = {}
    if getattr(getattr(model, "plan", None), "prune_layer", None) is not None:
        extra["prompt_len"] = lengths[0]  # one sample, no padding
    logits = model(**enc, use_cache=False, **extra).logits.float()  # (B, L, V)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    out = []
    for i, prompt_len in enumerate(lengths):
        n = int(mask[i].sum()) - prompt_len  # continuation tokens (left padding: they end the row)
        if n <= 0:
            out.append((0.0, True))
            continue
        L = ids.shape[1]
        target = ids[i, L - n:]  # (n,)
        logp = torch.log_softmax(logits[i, L - n - 1:L - 1], dim=-1)  # (n, V)
        out.append((float(logp.gather(-1, target[:, None]).sum()), bool((logp.argmax(-1) == target).all())))
    return out
