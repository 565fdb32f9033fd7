"""Tiny random models of every supported family, and prompts with images, videos and text-only.

Each `Family` builds a stock transformers model from its own config class (6 decoder layers,
untied LM head, special ids inside a 512-token vocabulary) and samples whose numbers of visual
tokens differ: two image sizes (or an image and a video) and a text-only sample. Visual token
counts are read from the family's own feature functions, never assumed. ``collate`` pads a list of
samples into one batch the way the family's processor would lay it out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

PAD, BOS, EOS = 0, 1, 2
IMAGE, VIDEO, VSTART, VEND = 5, 6, 7, 8
VOCAB = 512
LAYERS = 6
SPLIT = 3  # of LAYERS; after Qwen3-VL's deepstack layers (2 here)


def _text(n: int, g: torch.Generator) -> list[int]:
    return torch.randint(20, VOCAB, (n,), generator=g).tolist()


@dataclass
class Sample:
    ids: list[int]
    mm: dict = field(default_factory=dict)  # this sample's visual inputs, unbatched (family layout)
    kinds: tuple[str, ...] = ()  # 'image' / 'video' per visual input, in order


@dataclass
class Family:
    name: str
    build: Callable[[str, int], torch.nn.Module]  # (attn, seed) -> model
    samples: Callable[[torch.nn.Module], list[Sample]]  # three samples with different visual token counts
    collate: Callable[[list[Sample], str], dict]  # (samples, padding side) -> batch kwargs
    has_video: bool = False

    def make(self, attn: str = "sdpa", seed: int = 0):
        torch.manual_seed(seed)
        model = self.build(attn, seed).eval()
        for cfg in (model.config, model.config.get_text_config(), getattr(model.config, "vision_config", None)):
            if cfg is not None:
                cfg._attn_implementation = attn
        return model


def _pad_ids(samples: list[Sample], side: str) -> tuple[torch.Tensor, torch.Tensor, list[slice]]:
    width = max(len(s.ids) for s in samples)
    ids = torch.full((len(samples), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    spans = []
    for i, s in enumerate(samples):
        sl = slice(width - len(s.ids), width) if side == "left" else slice(0, len(s.ids))
        ids[i, sl] = torch.tensor(s.ids)
        mask[i, sl] = 1
        spans.append(sl)
    return ids, mask, spans


def _text_config(**extra) -> dict:
    return dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=1024, pad_token_id=PAD, bos_token_id=BOS,
                eos_token_id=EOS, tie_word_embeddings=False, **extra)


# ----------------------------------------------------------------------------- LLaVA-1.5
def _llava(attn, seed):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                              image_size=16, patch_size=4, projection_dim=16)
    config = LlavaConfig(vision_config=vision, text_config=LlamaConfig(**_text_config()), image_token_index=IMAGE,
                         vision_feature_layer=-2, vision_feature_select_strategy="default", tie_word_embeddings=False)
    return LlavaForConditionalGeneration(config)


def _llava_samples(model) -> list[Sample]:
    g = torch.Generator().manual_seed(0)
    n = (16 // 4) ** 2
    pix = lambda: torch.randn(1, 3, 16, 16, generator=g)  # noqa: E731
    one = Sample([BOS] + _text(3, g) + [IMAGE] * n + _text(4, g), {"pixel_values": pix()}, ("image",))
    two = Sample([BOS] + _text(2, g) + [IMAGE] * n + _text(2, g) + [IMAGE] * n + _text(3, g),
                 {"pixel_values": torch.cat([pix(), pix()])}, ("image", "image"))
    return [one, two, Sample([BOS] + _text(6, g))]


def _cat_collate(keys: tuple[str, ...]):
    def collate(samples: list[Sample], side: str = "left") -> dict:
        ids, mask, _ = _pad_ids(samples, side)
        out = {"input_ids": ids, "attention_mask": mask}
        for key in keys:
            parts = [s.mm[key] for s in samples if key in s.mm]
            if parts:
                out[key] = torch.cat(parts)
        return out
    return collate


# ----------------------------------------------------------------------------- LLaVA-NeXT / OneVision (AnyRes)
_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]


def _llava_next(attn, seed):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration

    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=16)
    config = LlavaNextConfig(vision_config=vision, text_config=LlamaConfig(**_text_config()), image_token_index=IMAGE,
                             image_grid_pinpoints=_PINPOINTS, vision_feature_layer=-2,
                             vision_feature_select_strategy="default", tie_word_embeddings=False)
    return LlavaNextForConditionalGeneration(config)


def _llava_onevision(attn, seed):
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config, SiglipVisionConfig

    vision = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                image_size=32, patch_size=8)
    config = LlavaOnevisionConfig(vision_config=vision, text_config=Qwen2Config(**_text_config()),
                                  image_token_index=IMAGE, video_token_index=VIDEO, image_grid_pinpoints=_PINPOINTS,
                                  vision_feature_layer=-1, vision_feature_select_strategy="full",
                                  tie_word_embeddings=False)
    return LlavaOnevisionForConditionalGeneration(config)


def _anyres_tiles(size: tuple[int, int]) -> int:
    return (size[0] // 32) * (size[1] // 32) + 1  # pinpoint = the image size here, plus the base view


def _anyres_image(model, g, size: tuple[int, int]) -> tuple[dict, int]:
    pix = torch.randn(1, _anyres_tiles(size), 3, 32, 32, generator=g)
    sizes = torch.tensor([list(size)])
    with torch.no_grad():
        feats = model.model.get_image_features(pixel_values=pix, image_sizes=sizes, return_dict=True).pooler_output
    return {"pixel_values": pix, "image_sizes": sizes}, int(feats[0].shape[0])


def _anyres_samples(model) -> list[Sample]:
    g = torch.Generator().manual_seed(0)
    mm_a, n_a = _anyres_image(model, g, (32, 64))
    mm_b, n_b = _anyres_image(model, g, (64, 64))
    a = Sample([BOS] + _text(3, g) + [IMAGE] * n_a + _text(4, g), mm_a, ("image",))
    b = Sample([BOS] + _text(2, g) + [IMAGE] * n_b + _text(3, g), mm_b, ("image",))
    return [a, b, Sample([BOS] + _text(6, g))]


def _onevision_samples(model) -> list[Sample]:
    g = torch.Generator().manual_seed(0)
    mm_a, n_a = _anyres_image(model, g, (32, 64))
    frames = torch.randn(1, 2, 3, 32, 32, generator=g)
    with torch.no_grad():
        n_v = int(model.model.get_video_features(pixel_values_videos=frames, return_dict=True).pooler_output.shape[1])
    a = Sample([BOS] + _text(3, g) + [IMAGE] * n_a + _text(4, g), mm_a, ("image",))
    v = Sample([BOS] + _text(2, g) + [VIDEO] * n_v + _text(3, g), {"pixel_values_videos": frames}, ("video",))
    return [a, v, Sample([BOS] + _text(6, g))]


def _anyres_collate(samples: list[Sample], side: str = "left") -> dict:
    ids, mask, _ = _pad_ids(samples, side)
    out = {"input_ids": ids, "attention_mask": mask}
    images = [s.mm for s in samples if "pixel_values" in s.mm]
    if images:
        tiles = max(m["pixel_values"].shape[1] for m in images)
        out["pixel_values"] = torch.cat([
            torch.nn.functional.pad(m["pixel_values"], (0, 0, 0, 0, 0, 0, 0, tiles - m["pixel_values"].shape[1]))
            for m in images])
        out["image_sizes"] = torch.cat([m["image_sizes"] for m in images])
    videos = [s.mm["pixel_values_videos"] for s in samples if "pixel_values_videos" in s.mm]
    if videos:
        out["pixel_values_videos"] = torch.cat(videos)
    return out


# ----------------------------------------------------------------------------- Qwen2-VL / 2.5-VL / 3-VL (M-RoPE)
_QWEN_TEXT = dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]})


def _qwen2_vl(attn, seed):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    config = Qwen2VLConfig(
        text_config=_text_config(**_QWEN_TEXT),
        vision_config=dict(depth=2, embed_dim=16, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=4,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VSTART, vision_end_token_id=VEND,
        tie_word_embeddings=False)
    return Qwen2VLForConditionalGeneration(config)


def _qwen2_5_vl(attn, seed):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(
        text_config=_text_config(**_QWEN_TEXT),
        vision_config=dict(depth=2, hidden_size=16, intermediate_size=32, out_hidden_size=32, num_heads=2,
                           patch_size=4, spatial_merge_size=2, temporal_patch_size=2, in_channels=3, window_size=16,
                           fullatt_block_indexes=[1]),
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VSTART, vision_end_token_id=VEND,
        tie_word_embeddings=False)
    return Qwen2_5_VLForConditionalGeneration(config)


def _qwen3_vl(attn, seed):
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    text = _text_config(head_dim=8, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                    "mrope_section": [2, 1, 1], "mrope_interleaved": True})
    config = Qwen3VLConfig(
        text_config=text,
        vision_config=dict(depth=2, hidden_size=16, intermediate_size=32, out_hidden_size=32, num_heads=2,
                           patch_size=4, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                           num_position_embeddings=16, deepstack_visual_indexes=[0, 1]),
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VSTART, vision_end_token_id=VEND,
        tie_word_embeddings=False)
    return Qwen3VLForConditionalGeneration(config)


_ROW = 3 * 2 * 4 * 4  # channels * temporal patch * patch * patch


def _qwen_visual(g, grid: tuple[int, int, int], per_frame_groups: bool) -> tuple[list[int], torch.Tensor, int]:
    """Placeholder ids (vision_start ... vision_end, per frame group for Qwen3-VL videos) and pixel rows."""
    t, h, w = grid
    rows = torch.randn(t * h * w, _ROW, generator=g)
    per_t = h * w // 4  # tokens per temporal group after the 2x2 merge
    return rows, t, per_t


def _qwen_samples_for(per_frame_groups: bool):
    def samples(model) -> list[Sample]:
        g = torch.Generator().manual_seed(0)
        # image 16x16 px -> grid (1, 4, 4) -> 4 tokens; image 16x32 -> (1, 4, 8) -> 8 tokens
        def image(h, w):
            rows, _, per_t = _qwen_visual(g, (1, h, w), False)
            return [VSTART] + [IMAGE] * per_t + [VEND], rows, torch.tensor([[1, h, w]])

        ids_a, rows_a, grid_a = image(4, 4)
        ids_b, rows_b, grid_b = image(4, 8)
        a = Sample([BOS] + _text(3, g) + ids_a + _text(2, g) + ids_b + _text(3, g),
                   {"pixel_values": torch.cat([rows_a, rows_b]), "image_grid_thw": torch.cat([grid_a, grid_b])},
                   ("image", "image"))
        # video of 4 frames 16x16 -> grid (2, 4, 4) -> 2 temporal groups of 4 tokens
        rows_v, t, per_t = _qwen_visual(g, (2, 4, 4), per_frame_groups)
        if per_frame_groups:  # Qwen3-VL: one vision_start...vision_end group per frame, a timestamp between
            vid = []
            for _ in range(t):
                vid += _text(1, g) + [VSTART] + [VIDEO] * per_t + [VEND]
        else:
            vid = [VSTART] + [VIDEO] * (t * per_t) + [VEND]
        v = Sample([BOS] + _text(2, g) + vid + _text(4, g),
                   {"pixel_values_videos": rows_v, "video_grid_thw": torch.tensor([[2, 4, 4]])}, ("video",))
        return [a, v, Sample([BOS] + _text(6, g))]
    return samples


def _qwen_collate(samples: list[Sample], side: str = "left") -> dict:
    ids, mask, _ = _pad_ids(samples, side)
    out = {"input_ids": ids, "attention_mask": mask,
           "mm_token_type_ids": (ids == IMAGE).int() + 2 * (ids == VIDEO).int()}
    for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"):
        parts = [s.mm[key] for s in samples if key in s.mm]
        if parts:
            out[key] = torch.cat(parts)
    return out


# ----------------------------------------------------------------------------- InternVL 3 (tiles, pixel shuffle)
def _internvl(attn, seed):
    from transformers import InternVLConfig, InternVLForConditionalGeneration, Qwen2Config

    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=16,
                  patch_size=4)
    config = InternVLConfig(vision_config=vision, text_config=Qwen2Config(**_text_config()), image_token_id=IMAGE,
                            vision_feature_layer=-1, tie_word_embeddings=False)
    return InternVLForConditionalGeneration(config)


def _internvl_samples(model) -> list[Sample]:
    """Images of 2 and 3 tiles (different token counts), each wrapped in <img> (VSTART) ... </img> (VEND)."""
    g = torch.Generator().manual_seed(0)

    def image(tiles):
        pix = torch.randn(tiles, 3, 16, 16, generator=g)
        with torch.no_grad():
            n = model.model.get_image_features(pixel_values=pix, return_dict=True).pooler_output
        return [VSTART] + [IMAGE] * (n.shape[0] * n.shape[1]) + [VEND], pix

    ids_a, pix_a = image(2)
    ids_b, pix_b = image(3)
    a = Sample([BOS] + _text(3, g) + ids_a + _text(4, g), {"pixel_values": pix_a}, ("image",))
    b = Sample([BOS] + _text(2, g) + ids_b + _text(3, g), {"pixel_values": pix_b}, ("image",))
    return [a, b, Sample([BOS] + _text(6, g))]


# ----------------------------------------------------------------------------- Mistral 3 / Pixtral (variable sizes)
IMG_BREAK, IMG_END = 9, 10


def _mistral3(attn, seed):
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, MistralConfig, PixtralVisionConfig

    vision = PixtralVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 head_dim=8, patch_size=4, image_size=32)
    config = Mistral3Config(vision_config=vision, text_config=MistralConfig(**_text_config(sliding_window=None)),
                            image_token_index=IMAGE, spatial_merge_size=2, vision_feature_layer=-1,
                            tie_word_embeddings=False)
    return Mistral3ForConditionalGeneration(config)


def _mistral3_samples(model) -> list[Sample]:
    """A 16x32 and a 32x32 image: rows of placeholders, each row ended by [IMG_BREAK], the last by [IMG_END]."""
    g = torch.Generator().manual_seed(0)
    per_token = 4 * 2  # patch size x spatial merge

    def image(h, w):
        pix = torch.randn(1, 3, h, w, generator=g)
        sizes = torch.tensor([[h, w]])
        with torch.no_grad():
            n = model.model.get_image_features(pixel_values=pix, image_sizes=sizes, return_dict=True).pooler_output
        rows, cols = h // per_token, w // per_token
        assert n[0].shape[0] == rows * cols
        ids = []
        for r in range(rows):
            ids += [IMAGE] * cols + [IMG_BREAK if r < rows - 1 else IMG_END]
        return ids, {"pixel_values": pix, "image_sizes": sizes}

    ids_a, mm_a = image(16, 32)
    ids_b, mm_b = image(32, 32)
    a = Sample([BOS] + _text(3, g) + ids_a + _text(4, g), mm_a, ("image",))
    b = Sample([BOS] + _text(2, g) + ids_b + _text(3, g), mm_b, ("image",))
    return [a, b, Sample([BOS] + _text(6, g))]


def _padded_images_collate(samples: list[Sample], side: str = "left") -> dict:
    """Images of different sizes padded bottom/right to the largest, as Pixtral's processor does."""
    ids, mask, _ = _pad_ids(samples, side)
    out = {"input_ids": ids, "attention_mask": mask}
    images = [s.mm for s in samples if "pixel_values" in s.mm]
    if images:
        h = max(m["pixel_values"].shape[2] for m in images)
        w = max(m["pixel_values"].shape[3] for m in images)
        out["pixel_values"] = torch.cat([
            torch.nn.functional.pad(m["pixel_values"], (0, w - m["pixel_values"].shape[3], 0, h - m["pixel_values"].shape[2]))
            for m in images])
        out["image_sizes"] = torch.cat([m["image_sizes"] for m in images])
    return out


# ----------------------------------------------------------------------------- Idefics3 / SmolVLM (LM at model.text_model)
FAKE_AROUND, GLOBAL_IMG = 11, 12
_ROW_COL = {(r, c): 13 + 2 * r + c for r in range(2) for c in range(2)}  # <row_i_col_j>


def _idefics3_like(kind: str):
    def build(attn, seed):
        import transformers
        from transformers import LlamaConfig

        prefix = {"idefics3": "Idefics3", "smolvlm": "SmolVLM"}[kind]
        vision = getattr(transformers, f"{prefix}VisionConfig")(
            hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=16,
            patch_size=4)
        config = getattr(transformers, f"{prefix}Config")(
            vision_config=vision, text_config=LlamaConfig(**_text_config()), image_token_id=IMAGE, scale_factor=2,
            tie_word_embeddings=False)
        return getattr(transformers, f"{prefix}ForConditionalGeneration")(config)
    return build


def _idefics3_samples(model) -> list[Sample]:
    """A global-only image, and an image split 1x2 plus its global view: one span per sub-image, between
    <fake_token_around_image>, <row_i_col_j> and <global-img> text tokens."""
    g = torch.Generator().manual_seed(0)
    n = model.model.image_seq_len

    def image(rows, cols):
        subs = rows * cols + (1 if rows * cols > 1 else 0)
        pix = torch.randn(1, subs, 3, 16, 16, generator=g)
        ids = []
        if rows * cols > 1:
            for r in range(rows):
                for c in range(cols):
                    ids += [FAKE_AROUND, _ROW_COL[(r, c)]] + [IMAGE] * n
        ids += [FAKE_AROUND, GLOBAL_IMG] + [IMAGE] * n + [FAKE_AROUND]
        return ids, {"pixel_values": pix, "pixel_attention_mask": torch.ones(1, subs, 16, 16, dtype=torch.bool)}

    ids_a, mm_a = image(1, 1)
    ids_b, mm_b = image(1, 2)
    a = Sample([BOS] + _text(3, g) + ids_a + _text(4, g), mm_a, ("image",))
    b = Sample([BOS] + _text(2, g) + ids_b + _text(3, g), mm_b, ("image",))
    return [a, b, Sample([BOS] + _text(6, g))]


def _idefics3_collate(samples: list[Sample], side: str = "left") -> dict:
    """(B, max sub-images, 3, 16, 16) zero-padded, as the processor does (all-zero images are dropped by the model)."""
    ids, mask, _ = _pad_ids(samples, side)
    out = {"input_ids": ids, "attention_mask": mask}
    if any("pixel_values" in s.mm for s in samples):
        subs = max(s.mm["pixel_values"].shape[1] for s in samples if "pixel_values" in s.mm)
        pix = torch.zeros(len(samples), subs, 3, 16, 16)
        pmask = torch.zeros(len(samples), subs, 16, 16, dtype=torch.bool)
        for i, s in enumerate(samples):
            if "pixel_values" in s.mm:
                k = s.mm["pixel_values"].shape[1]
                pix[i, :k] = s.mm["pixel_values"][0]
                pmask[i, :k] = s.mm["pixel_attention_mask"][0]
        out["pixel_values"], out["pixel_attention_mask"] = pix, pmask
    return out


# ----------------------------------------------------------------------------- Gemma 3 (sliding/full layers, bidirectional images)
BOI, EOI = 17, 18
# sliding and full layers in every group the engine forms at SPLIT: shallow, side branch (a copy of layer 3),
# text view, fuse, kv, and FastV's kept view
GEMMA3_LAYER_TYPES = ["sliding_attention", "full_attention", "sliding_attention", "sliding_attention",
                      "full_attention", "sliding_attention"]


def _gemma3(attn, seed):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    text = Gemma3TextConfig(**_text_config(
        head_dim=8, query_pre_attn_scalar=8, sliding_window=6, layer_types=GEMMA3_LAYER_TYPES,
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0}}))
    vision = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                image_size=16, patch_size=4)
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4, boi_token_index=BOI,
                          eoi_token_index=EOI, image_token_index=IMAGE, tie_word_embeddings=False)
    return Gemma3ForConditionalGeneration(config)


def _gemma3_samples(model) -> list[Sample]:
    """One and two images of mm_tokens_per_image placeholders each, between <start_of_image> and <end_of_image>."""
    g = torch.Generator().manual_seed(0)
    n = model.config.mm_tokens_per_image
    img = [BOI] + [IMAGE] * n + [EOI]
    pix = lambda: torch.randn(1, 3, 16, 16, generator=g)  # noqa: E731
    one = Sample([BOS] + _text(3, g) + img + _text(4, g), {"pixel_values": pix()}, ("image",))
    two = Sample([BOS] + _text(2, g) + img + _text(2, g) + img + _text(3, g),
                 {"pixel_values": torch.cat([pix(), pix()])}, ("image", "image"))
    return [one, two, Sample([BOS] + _text(6, g))]


def _gemma3_collate(samples: list[Sample], side: str = "left") -> dict:
    """``token_type_ids`` 1 at the image placeholders (bidirectional within each image), as the processor sets them."""
    out = _cat_collate(("pixel_values",))(samples, side)
    out["token_type_ids"] = (out["input_ids"] == IMAGE).long()
    return out


FAMILIES = {
    "llava": Family("llava", _llava, _llava_samples, _cat_collate(("pixel_values",))),
    "llava_next": Family("llava_next", _llava_next, _anyres_samples, _anyres_collate),
    "llava_onevision": Family("llava_onevision", _llava_onevision, _onevision_samples, _anyres_collate, has_video=True),
    "qwen2_vl": Family("qwen2_vl", _qwen2_vl, _qwen_samples_for(False), _qwen_collate, has_video=True),
    "qwen2_5_vl": Family("qwen2_5_vl", _qwen2_5_vl, _qwen_samples_for(False), _qwen_collate, has_video=True),
    "qwen3_vl": Family("qwen3_vl", _qwen3_vl, _qwen_samples_for(True), _qwen_collate, has_video=True),
    "internvl": Family("internvl", _internvl, _internvl_samples, _cat_collate(("pixel_values",))),
    "mistral3": Family("mistral3", _mistral3, _mistral3_samples, _padded_images_collate),
    "idefics3": Family("idefics3", _idefics3_like("idefics3"), _idefics3_samples, _idefics3_collate),
    "smolvlm": Family("smolvlm", _idefics3_like("smolvlm"), _idefics3_samples, _idefics3_collate),
    "gemma3": Family("gemma3", _gemma3, _gemma3_samples, _gemma3_collate),
}
