"""Random-weight LLaVA models of any size, built from stock classes (no download), and prompts for them."""

from __future__ import annotations

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

IMAGE_TOKEN_ID = 3


def random_llava(image_grid: int = 8, num_layers: int = 8, hidden: int = 128, vocab: int = 256, seed: int = 0,
                 attn: str = "sdpa") -> LlavaForConditionalGeneration:
    """A LLaVA (CLIP tower + Llama LM) with ``image_grid**2`` image tokens and random weights."""
    torch.manual_seed(seed)
    patch = 4
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=image_grid * patch, patch_size=patch)
    text = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=num_layers,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                       pad_token_id=0, bos_token_id=1, eos_token_id=2)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN_ID,
                         vision_feature_layer=-2, vision_feature_select_strategy="default")
    config._attn_implementation = attn
    return LlavaForConditionalGeneration(config).eval()


def random_prompt(model, text_tokens: int = 24, system_tokens: int = 8, seed: int = 0):
    """(input_ids (1, L), pixel_values (1, 3, H, W)): system tokens, one image, then text."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.text_config.vocab_size
    vision = model.config.vision_config
    n_image = (vision.image_size // vision.patch_size) ** 2
    image_id = model.config.image_token_id
    ids = torch.cat([
        torch.tensor([1]),
        torch.randint(4, vocab, (system_tokens,), generator=g),
        torch.full((n_image,), image_id),
        torch.randint(4, vocab, (text_tokens,), generator=g),
    ])[None]
    pixels = torch.randn(1, 3, vision.image_size, vision.image_size, generator=g)
    return ids, pixels
