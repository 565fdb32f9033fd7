"""Shared fixtures: tiny random LLaVA models built in the test (offline, CPU, seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

IMAGE_TOKEN_ID = 3  # a low id so random tokens drawn from [5, vocab) never collide with it
PAD_TOKEN_ID = 0


def make_tiny_llava(
    num_layers: int = 6,
    hidden: int = 32,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 64,
    image_size: int = 16,
    patch: int = 4,
    attn: str = "sdpa",
    seed: int = 0,
) -> LlavaForConditionalGeneration:
    """A random-weight LLaVA (CLIP tower + Llama LM) with (image_size/patch)**2 image tokens."""
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        image_size=image_size, patch_size=patch, projection_dim=16,
    )
    text = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=num_layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=256,
        pad_token_id=PAD_TOKEN_ID, bos_token_id=1, eos_token_id=2,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN_ID,
        vision_feature_layer=-2, vision_feature_select_strategy="default",
    )
    config._attn_implementation = attn
    model = LlavaForConditionalGeneration(config).eval()
    model.config._attn_implementation = attn
    for sub in (model.config.text_config, model.config.vision_config):
        sub._attn_implementation = attn
    return model


def num_image_tokens(model) -> int:
    v = model.config.vision_config
    return (v.image_size // v.patch_size) ** 2


@pytest.fixture
def tiny_llava():
    return make_tiny_llava()


def sample_ids(num_images: int, n_image_tokens: int, text: tuple[int, ...] = (9, 10, 11, 12), seed: int = 0) -> list[int]:
    """A prompt with `num_images` image blocks: BOS, system tokens, then image/text segments."""
    g = torch.Generator().manual_seed(seed)
    ids = [1] + torch.randint(5, 60, (3,), generator=g).tolist()
    for _ in range(num_images):
        ids += [IMAGE_TOKEN_ID] * n_image_tokens + torch.randint(5, 60, (2,), generator=g).tolist()
    return ids + list(text)


def pad_batch(seqs: list[list[int]], side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) padded with PAD_TOKEN_ID on `side`."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), PAD_TOKEN_ID, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        ids[i, sl] = torch.tensor(s)
        mask[i, sl] = 1
    return ids, mask


def assert_cached_decode_equals_recompute(model, ids, mask, pixels, max_new_tokens: int) -> None:
    """Greedy generate with the KV cache and with a no-cache recompute: same tokens, same logits."""
    from torch.testing import assert_close

    kw = dict(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=max_new_tokens, do_sample=False,
              suppress_tokens=[IMAGE_TOKEN_ID], output_logits=True, return_dict_in_generate=True,
              pad_token_id=PAD_TOKEN_ID, eos_token_id=None)
    cached = model.generate(**kw, use_cache=True)
    recompute = model.generate(**kw, use_cache=False)
    assert torch.equal(cached.sequences, recompute.sequences)
    assert_close(torch.stack(cached.logits), torch.stack(recompute.logits), rtol=1e-4, atol=1e-5)


def random_pixels(num_images: int, model, seed: int = 0) -> torch.Tensor | None:
    if num_images == 0:
        return None
    size = model.config.vision_config.image_size
    return torch.randn(num_images, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """Generated data + a random tiny LLaVA with a tokenizer trained on that data (offline, seconds)."""
    from dpvr.data.generate import generate_dataset
    from dpvr.tiny.tokenizer import make_processor, train_tokenizer, training_texts

    root = tmp_path_factory.mktemp("tiny")
    generate_dataset(root / "data", seed=0, num_train=40, num_test_per_family=6)
    records = json.loads((root / "data" / "train.json").read_text())
    tok = train_tokenizer(training_texts(records), vocab_size=300)
    processor = make_processor(tok, 64, 16)  # 16 image tokens
    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                       image_size=64, patch_size=16),
        text_config=LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id),
        image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    LlavaForConditionalGeneration(config).save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    return root
