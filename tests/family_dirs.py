"""Tiny saved checkpoints of non-LLaVA families, with their own processor and chat template (offline, seconds).

``build_qwen2_vl(root)`` writes ``root/model``: a random ``Qwen2VLForConditionalGeneration`` (the
config of ``tests/families.py``, vocabulary sized to the tokenizer), a byte-level BPE tokenizer
trained on the generated data with Qwen's special tokens at the ids the config uses, the PIL
``Qwen2VLImageProcessorPil`` (patch 4, merge 2: a 64x64 image becomes 16 image tokens) and Qwen2-VL's
own chat template (without ``{% generation %}`` markers, as shipped). ``root/data`` is a generated
training set and benchmark, as the LLaVA ``tiny_dir`` fixture has.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"]  # ids 0..8

# Qwen2-VL-Instruct's chat template (as shipped on the hub).
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _texts(data: Path) -> list[str]:
    records = json.loads((data / "train.json").read_text())
    texts = [t["value"] for r in records for t in r["conversations"]]
    for family in data.glob("*.jsonl"):
        for line in family.read_text().splitlines():
            row = json.loads(line)
            texts += [str(row.get(k, "")) for k in ("question", "answer", "caption")]
    return texts + ["system You are a helpful assistant. user assistant"] * 50


def qwen_tokenizer(texts: list[str], vocab_size: int = 400, special: list[str] = QWEN_SPECIAL,
                   template: str = QWEN2_VL_TEMPLATE):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                   padding_side="left", model_max_length=2048, clean_up_tokenization_spaces=False)
    fast.chat_template = template
    return fast


def qwen2_vl_image_processor():
    """Qwen2-VL's PIL image processor at the tiny vision config: patch 4, merge 2, at most 32x32 pixels."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(patch_size=4, temporal_patch_size=2, merge_size=2,
                                    min_pixels=8 * 8, max_pixels=32 * 32)


def build_qwen2_vl(root: Path, num_train: int = 24, num_test_per_family: int = 6) -> Path:
    """``root/data`` (generated) and ``root/model`` (random tiny Qwen2-VL + its processor); returns ``root``."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from dpvr.data.generate import generate_dataset

    generate_dataset(root / "data", seed=0, num_train=num_train, num_test_per_family=num_test_per_family,
                     progress=False)
    tok = qwen_tokenizer(_texts(root / "data"))
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    torch.manual_seed(0)
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=6,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         pad_token_id=ids["<|endoftext|>"], bos_token_id=ids["<|im_start|>"],
                         eos_token_id=ids["<|im_end|>"], tie_word_embeddings=False,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}),
        vision_config=dict(depth=2, embed_dim=16, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=4,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.save_pretrained(root / "model")
    # Saved part by part, as hub checkpoints are: Qwen2VLProcessor itself cannot be built here (its video
    # processor needs torchvision), and dpvr.loading loads it image-only then.
    tok.save_pretrained(root / "model")
    qwen2_vl_image_processor().save_pretrained(root / "model")
    (root / "model" / "chat_template.jinja").write_text(QWEN2_VL_TEMPLATE)
    return root


def build_llava_next(root: Path, num_train: int = 24, num_test_per_family: int = 6) -> Path:
    """``root/data`` and ``root/model``: a random tiny LLaVA-NeXT (AnyRes: 32x32 tiles, pinpoints up to 64x64)
    with the tiny LLaVA tokenizer and chat template and the PIL ``LlavaNextImageProcessorPil``."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    from dpvr.data.generate import generate_dataset
    from dpvr.tiny.tokenizer import CHAT_TEMPLATE, CLIP_MEAN, CLIP_STD, train_tokenizer, training_texts

    generate_dataset(root / "data", seed=0, num_train=num_train, num_test_per_family=num_test_per_family,
                     progress=False)
    records = json.loads((root / "data" / "train.json").read_text())
    tok = train_tokenizer(training_texts(records) + _texts(root / "data"), vocab_size=400)
    pinpoints = [[32, 32], [32, 64], [64, 32], [64, 64]]
    images = LlavaNextImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                        image_grid_pinpoints=pinpoints, image_mean=CLIP_MEAN, image_std=CLIP_STD)
    processor = LlavaNextProcessor(image_processor=images, tokenizer=tok, patch_size=8,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=CHAT_TEMPLATE)
    torch.manual_seed(0)
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=16)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=6,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    config = LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                             image_grid_pinpoints=pinpoints, vision_feature_layer=-2,
                             vision_feature_select_strategy="default", tie_word_embeddings=False)
    LlavaNextForConditionalGeneration(config).save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    return root


# LLaVA-OneVision's chat template (llava-hf, Qwen2 LM): images, then videos, then the text of each turn.
ONEVISION_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\\n' + content['text'] }}"
    "{% endfor %}{% endif %}{{ '<|im_end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def build_llava_onevision(root: Path, num_train: int = 24, num_test_per_family: int = 6) -> Path:
    """``root/data`` and ``root/model``: a random tiny LLaVA-OneVision (SigLIP 32x32 tiles, Qwen2 LM), its PIL image
    processor and chat template; saved part by part (its processor's video half needs torchvision)."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config, SiglipVisionConfig
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil

    from dpvr.data.generate import generate_dataset

    generate_dataset(root / "data", seed=0, num_train=num_train, num_test_per_family=num_test_per_family,
                     progress=False)
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
    tok = qwen_tokenizer(_texts(root / "data"), special=special, template=ONEVISION_TEMPLATE)
    pinpoints = [[32, 32], [32, 64], [64, 32], [64, 64]]
    images = LlavaOnevisionImageProcessorPil(size={"height": 32, "width": 32}, image_grid_pinpoints=pinpoints)
    torch.manual_seed(0)
    vision = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                image_size=32, patch_size=8)
    text = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=6,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.convert_tokens_to_ids("<|im_start|>"),
                       eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    config = LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                                  video_token_index=tok.convert_tokens_to_ids("<video>"), image_grid_pinpoints=pinpoints,
                                  vision_feature_layer=-1, vision_feature_select_strategy="full",
                                  tie_word_embeddings=False)
    model = LlavaOnevisionForConditionalGeneration(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    images.save_pretrained(root / "model")
    (root / "model" / "chat_template.jinja").write_text(ONEVISION_TEMPLATE)
    (root / "model" / "processor_config.json").write_text(json.dumps({
        "processor_class": "LlavaOnevisionProcessor", "num_image_tokens": 16, "vision_feature_select_strategy": "full",
        "image_token": "<image>", "video_token": "<video>", "vision_aspect_ratio": "anyres_max_9"}, indent=2))
    return root


# ----------------------------------------------------------------------------- every other family (issues 19, 26)
# Each builder below saves the random tiny model of `tests/families.py` (the configs the engine suite checks)
# beside a byte-level BPE tokenizer whose special tokens sit at the ids those configs use (families.PAD, IMAGE,
# VSTART, IMG_BREAK, BOI, ...), the family's own image processor (PIL, sized to the tiny vision tower), its
# processor settings and a chat template in the family's format.

def family_tokenizer(texts: list[str], special: list[str], template: str, *, pad: str, eos: str,
                     bos: str | None = None, extra: dict | None = None, vocab_size: int = 400):
    """A byte-level BPE tokenizer with ``special`` at ids 0.. in order, the family's named tokens as attributes
    (``extra``: e.g. Gemma 3's ``boi_token``) and its chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=pad, eos_token=eos, bos_token=bos,
                                   extra_special_tokens=extra or {}, padding_side="left", model_max_length=2048,
                                   clean_up_tokenization_spaces=False)
    fast.chat_template = template
    return fast


def _content_loop(image: str, text: str = "{{ c['text'] }}") -> str:
    return ("{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
            f"{{% if c['type'] == 'image' %}}{image}{{% elif c['type'] == 'text' %}}{text}{{% endif %}}"
            "{% endfor %}{% endif %}")


# Qwen2.5-VL and Qwen3-VL ship Qwen2-VL's template; InternVL 3 (Qwen2 LM) a ChatML one with <IMG_CONTEXT>.
INTERNVL_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n" + _content_loop("<IMG_CONTEXT>\n")
                     + "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# Mistral 3: [INST] user [/INST] answer</s> (the generation prompt is the [/INST] itself).
MISTRAL3_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST]" + _content_loop("[IMG]")
                     + "[/INST]{% else %}" + _content_loop("") + "{{ eos_token }}{% endif %}{% endfor %}")
# Idefics3 / SmolVLM: "User:<image>question<end_of_utterance>\nAssistant: answer<end_of_utterance>\n".
IDEFICS3_TEMPLATE = ("<|begin_of_text|>{% for m in messages %}{{ m['role'] | capitalize }}"
                     "{% if m['content'] is not string and m['content'][0]['type'] == 'image' %}:{% else %}: {% endif %}"
                     + _content_loop("<image>") + "<end_of_utterance>\n{% endfor %}"
                     "{% if add_generation_prompt %}Assistant:{% endif %}")
# Gemma 3: <start_of_turn>user|model ... <end_of_turn>; an image is <start_of_image> (the processor expands it).
GEMMA3_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<start_of_turn>"
                   "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n" + _content_loop("<start_of_image>")
                   + "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def _qwen_like_processor_files(out: Path, tok, template: str) -> None:
    qwen2_vl_image_processor().save_pretrained(out)
    (out / "chat_template.jinja").write_text(template)


def _internvl_processor_files(out: Path, tok, template: str) -> None:
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    # 16-px tiles (the tiny tower), up to 4 tiles plus the thumbnail: 4 tokens per tile after the pixel shuffle
    GotOcr2ImageProcessorPil(size={"height": 16, "width": 16}, crop_to_patches=True, min_patches=1,
                             max_patches=4).save_pretrained(out)
    (out / "chat_template.jinja").write_text(template)
    (out / "processor_config.json").write_text(json.dumps({"processor_class": "InternVLProcessor",
                                                           "image_seq_length": 4}, indent=2))


def _mistral3_processor_files(out: Path, tok, template: str) -> None:
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    # saved part by part: PixtralProcessor's module needs torchvision (dpvr.loading builds its PIL equivalent)
    PixtralImageProcessorPil(size={"longest_edge": 32}, patch_size={"height": 8, "width": 8}).save_pretrained(out)
    (out / "chat_template.jinja").write_text(template)
    (out / "processor_config.json").write_text(json.dumps({"processor_class": "PixtralProcessor", "patch_size": 4,
                                                           "spatial_merge_size": 2}, indent=2))


def _idefics3_processor_files(out: Path, tok, template: str) -> None:
    from transformers import Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    # 64-px images -> 32 px -> 2x2 sub-images of 16 px plus the global view, 4 tokens each
    images = Idefics3ImageProcessorPil(size={"longest_edge": 32}, max_image_size={"longest_edge": 16})
    Idefics3Processor(image_processor=images, tokenizer=tok, image_seq_len=4, chat_template=template).save_pretrained(out)


def _smolvlm_processor_files(out: Path, tok, template: str) -> None:
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    # saved part by part: SmolVLMProcessor's video processor needs torchvision (dpvr.loading loads it image-only)
    SmolVLMImageProcessorPil(size={"longest_edge": 32}, max_image_size={"longest_edge": 16}).save_pretrained(out)
    (out / "chat_template.jinja").write_text(template)
    (out / "processor_config.json").write_text(json.dumps({"processor_class": "SmolVLMProcessor",
                                                           "image_seq_len": 4}, indent=2))


def _gemma3_processor_files(out: Path, tok, template: str) -> None:
    from transformers import Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    images = Gemma3ImageProcessorPil(size={"height": 16, "width": 16})
    Gemma3Processor(image_processor=images, tokenizer=tok, image_seq_length=4, chat_template=template).save_pretrained(out)


_QWEN_SLOTS = dict(enumerate(QWEN_SPECIAL))
_CHATML = {0: "<|endoftext|>", 1: "<|im_start|>", 2: "<|im_end|>"}
_IDEFICS = {0: "<|endoftext|>", 1: "<|begin_of_text|>", 2: "<end_of_utterance>", 5: "<image>",
            11: "<fake_token_around_image>", 12: "<global-img>", 13: "<row_1_col_1>", 14: "<row_1_col_2>",
            15: "<row_2_col_1>", 16: "<row_2_col_2>"}

#: model_type -> (special tokens by id, pad, eos, bos, named-token attributes, chat template, processor files)
TOOL_FAMILIES = {
    "qwen2_5_vl": (_QWEN_SLOTS, "<|endoftext|>", "<|im_end|>", None, {}, QWEN2_VL_TEMPLATE, _qwen_like_processor_files),
    "qwen3_vl": (_QWEN_SLOTS, "<|endoftext|>", "<|im_end|>", None, {}, QWEN2_VL_TEMPLATE, _qwen_like_processor_files),
    "internvl": ({**_CHATML, 5: "<IMG_CONTEXT>", 6: "<video>", 7: "<img>", 8: "</img>"}, "<|endoftext|>", "<|im_end|>",
                 None, {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                        "video_token": "<video>"}, INTERNVL_TEMPLATE, _internvl_processor_files),
    "mistral3": ({0: "<pad>", 1: "<s>", 2: "</s>", 3: "[INST]", 4: "[/INST]", 5: "[IMG]", 9: "[IMG_BREAK]",
                  10: "[IMG_END]"}, "<pad>", "</s>", "<s>", {}, MISTRAL3_TEMPLATE, _mistral3_processor_files),
    "idefics3": (_IDEFICS, "<|endoftext|>", "<end_of_utterance>", "<|begin_of_text|>", {}, IDEFICS3_TEMPLATE,
                 _idefics3_processor_files),
    "smolvlm": (_IDEFICS, "<|endoftext|>", "<end_of_utterance>", "<|begin_of_text|>", {}, IDEFICS3_TEMPLATE,
                _smolvlm_processor_files),
    "gemma3": ({0: "<pad>", 1: "<bos>", 2: "<end_of_turn>", 3: "<start_of_turn>", 4: "<eos>",
                5: "<image_soft_token>", 17: "<start_of_image>", 18: "<end_of_image>"}, "<pad>", "<end_of_turn>", "<bos>",
               {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"},
               GEMMA3_TEMPLATE, _gemma3_processor_files),
}


def build_family(name: str, root: Path, num_train: int = 24, num_test_per_family: int = 6) -> Path:
    """``root/data`` (generated) and ``root/model``: the tiny random ``name`` model of `tests/families.py`, saved with
    its tokenizer, image processor, processor settings and chat template; returns ``root``."""
    from families import FAMILIES, VOCAB

    from dpvr.data.generate import generate_dataset

    slots, pad, eos, bos, extra, template, processor_files = TOOL_FAMILIES[name]
    generate_dataset(root / "data", seed=0, num_train=num_train, num_test_per_family=num_test_per_family,
                     progress=False)
    special = [slots.get(i, f"<|unused_{i}|>") for i in range(max(slots) + 1)]
    tok = family_tokenizer(_texts(root / "data"), special, template, pad=pad, eos=eos, bos=bos, extra=extra,
                           vocab_size=VOCAB)
    assert len(tok) <= VOCAB and all(tok.convert_tokens_to_ids(t) == i for i, t in slots.items())
    model = FAMILIES[name].make("sdpa", seed=0)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    out = root / "model"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    processor_files(out, tok, template)
    return root
