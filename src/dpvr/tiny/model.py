"""Architecture of the tiny LLaVA: stock ``transformers`` classes, sized for 2 CPU cores.

``LlavaForConditionalGeneration`` = CLIP vision tower -> 2-layer GELU projector -> Llama LM,
with LLaVA-1.5's ``vision_feature_layer=-2`` and ``"default"`` select strategy (CLS dropped),
so a 64x64 image with patch 8 gives 64 image tokens. ``CLIPModel`` (same vision config + a small
``CLIPTextModel``) is used only to pretrain the vision tower contrastively.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from transformers import (CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                          LlavaForConditionalGeneration)

from dpvr.tiny.tokenizer import SPECIAL_TOKENS


@dataclass(frozen=True)
class TinyArch:
    image_size: int = 64
    patch_size: int = 8
    vision_hidden: int = 128
    vision_layers: int = 5
    vision_heads: int = 4
    vision_intermediate: int = 512
    clip_text_hidden: int = 128
    clip_text_layers: int = 2
    projection_dim: int = 128
    lm_hidden: int = 128
    lm_layers: int = 8
    lm_heads: int = 4
    lm_kv_heads: int = 4
    lm_intermediate: int = 384
    max_positions: int = 512

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.lm_layers < 8:
            raise ValueError(f"lm_layers must be >= 8 so DPVR's split has room, got {self.lm_layers}")
        if self.lm_hidden % self.lm_heads or self.vision_hidden % self.vision_heads:
            raise ValueError("hidden sizes must be divisible by their head counts")

    @property
    def num_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict:
        return asdict(self)


def _ids():
    return {name: i for i, name in enumerate(SPECIAL_TOKENS)}


def vision_config(arch: TinyArch) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=arch.vision_hidden, intermediate_size=arch.vision_intermediate,
        num_hidden_layers=arch.vision_layers, num_attention_heads=arch.vision_heads,
        image_size=arch.image_size, patch_size=arch.patch_size, projection_dim=arch.projection_dim,
        hidden_act="quick_gelu",
    )


def clip_config(arch: TinyArch, vocab_size: int) -> CLIPConfig:
    ids = _ids()
    # eos_token_id != 2 selects CLIP's "first EOS position" pooling (2 triggers the legacy argmax).
    text = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=arch.clip_text_hidden, intermediate_size=4 * arch.clip_text_hidden,
        num_hidden_layers=arch.clip_text_layers, num_attention_heads=4, max_position_embeddings=64,
        projection_dim=arch.projection_dim, pad_token_id=ids["<pad>"], bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"],
    )
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision_config(arch).to_dict(),
                      projection_dim=arch.projection_dim)


def llava_config(arch: TinyArch, vocab_size: int) -> LlavaConfig:
    ids = _ids()
    text = LlamaConfig(
        vocab_size=vocab_size, hidden_size=arch.lm_hidden, intermediate_size=arch.lm_intermediate,
        num_hidden_layers=arch.lm_layers, num_attention_heads=arch.lm_heads,
        num_key_value_heads=arch.lm_kv_heads, max_position_embeddings=arch.max_positions,
        pad_token_id=ids["<pad>"], bos_token_id=ids["<s>"], eos_token_id=ids["</s>"],
        tie_word_embeddings=False,
    )
    cfg = LlavaConfig(
        vision_config=vision_config(arch), text_config=text, image_token_index=ids["<image>"],
        vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu",
        image_seq_length=arch.num_image_tokens,
    )
    cfg.pad_token_id = ids["<pad>"]
    return cfg


def build_clip(arch: TinyArch, vocab_size: int, seed: int) -> CLIPModel:
    torch.manual_seed(seed)
    return CLIPModel(clip_config(arch, vocab_size))


def build_llava(arch: TinyArch, vocab_size: int, seed: int) -> LlavaForConditionalGeneration:
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(llava_config(arch, vocab_size))


def vision_features(vision_tower, pixel_values: torch.Tensor, layer: int = -2) -> torch.Tensor:
    """LLaVA's image features before the projector: hidden state ``layer``, CLS dropped.

    (B, 3, H, W) -> (B, num_patches, vision_hidden)
    """
    out = vision_tower(pixel_values, output_hidden_states=True)
    return out.hidden_states[layer][:, 1:]
