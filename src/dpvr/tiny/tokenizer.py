"""Tokenizer and processor of the tiny LLaVA.

A byte-level BPE trained with the ``tokenizers`` library on the generated text, saved as a
``PreTrainedTokenizerFast`` with LLaVA-1.5's (Vicuna v1) chat template::

    USER: <image>\\nQuestion? ASSISTANT: answer</s>USER: next question ASSISTANT: ...</s>

``<image>`` is a special token; the ``LlavaProcessor`` expands it to one token per image patch.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

UNK, PAD, BOS, EOS, IMAGE = "<unk>", "<pad>", "<s>", "</s>", "<image>"
SPECIAL_TOKENS = [UNK, PAD, BOS, EOS, IMAGE]  # ids 0..4, in this order

# LLaVA-1.5 conversation format ("vicuna_v1"): no BOS in the text, assistant turns end with </s>.
# The {% generation %} markers let ``return_assistant_tokens_mask`` find the supervised tokens.
CHAT_TEMPLATE = (
    "{%- macro text(content) -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- else -%}{{- content | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') -}}"
    "{%- endif -%}"
    "{%- endmacro -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{- text(message['content']) + ' ' -}}"
    "{%- elif message['role'] == 'user' -%}"
    "{{- 'USER: ' -}}"
    "{%- if message['content'] is not string -%}"
    "{%- for c in message['content'] | selectattr('type', 'equalto', 'image') -%}{{- '<image>\\n' -}}{%- endfor -%}"
    "{%- endif -%}"
    "{{- text(message['content']) + ' ' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- 'ASSISTANT: ' -}}"
    "{%- generation -%}{{- text(message['content']) + eos_token -}}{%- endgeneration -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)

# Image normalisation: CLIP's constants, as in LLaVA-1.5.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` (plus the chat-template words) and wrap it."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    scaffold = ["USER: ASSISTANT: USER: ASSISTANT:"] * 100
    tok.train_from_iterator(list(scaffold) + list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token=UNK, pad_token=PAD, bos_token=BOS, eos_token=EOS,
        extra_special_tokens={"image_token": IMAGE}, padding_side="left",
        model_max_length=512, clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_image_processor(image_size: int) -> CLIPImageProcessor:
    return CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": image_size}, do_center_crop=True,
        crop_size={"height": image_size, "width": image_size}, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=CLIP_MEAN, image_std=CLIP_STD, do_convert_rgb=True,
    )


def make_processor(tokenizer: PreTrainedTokenizerFast, image_size: int, patch_size: int) -> LlavaProcessor:
    """``LlavaProcessor`` that expands ``<image>`` to (image_size/patch_size)**2 tokens ("default")."""
    return LlavaProcessor(
        image_processor=make_image_processor(image_size), tokenizer=tokenizer, patch_size=patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE, image_token=IMAGE,
    )


def training_texts(records: list[dict], captions: list[str] = ()) -> list[str]:
    """The texts a tokenizer is trained on: every record rendered with the chat template."""
    from dpvr.data.llava_format import record_to_messages

    out = []
    for rec in records:
        for m in record_to_messages(rec):
            text = " ".join(c["text"] for c in m["content"] if c.get("type") == "text")
            prefix = {"user": "USER: ", "assistant": "ASSISTANT: ", "system": ""}[m["role"]]
            out.append(prefix + text)
    out += list(captions)
    return out
