"""Random model inputs of any family for a prompt layout: token ids, the pixel tensors the family's
model takes, and the token-type ids some families ask for.

Used by ``dpvr bench latency`` (random weights, no processor, nothing downloaded) and by the tests
that count FLOPs with torch's counter. What each family gets (as its processor would write it):

=================  ================================================================================
llava, gemma3      ``pixel_values`` (images, 3, S, S); Gemma 3 also ``token_type_ids`` (1 at image tokens)
llava_next / OV    ``pixel_values`` (B, crops, 3, S, S) with ``image_sizes``; OV video ``pixel_values_videos``
                   (B, frames, 3, S, S)
qwen2/2.5/3-VL     one row of C·T·p·p values per patch with ``image_grid_thw`` / ``video_grid_thw``, and
                   ``mm_token_type_ids`` (0 text, 1 image, 2 video); start/end markers are the
                   family's ``vision_start`` / ``vision_end`` ids
internvl           ``pixel_values`` (tiles, 3, S, S)
idefics3/smolvlm   ``pixel_values`` (B, tiles, 3, S, S) and ``pixel_attention_mask``
mistral3           ``pixel_values`` (B, 3, H, W) of the resized image and ``image_sizes``
=================  ================================================================================

Every sample of a batch has the same layout. Example::

    from dpvr.efficiency.inputs import model_inputs
    from dpvr.shapes import load_shape_config
    from dpvr.shapes.layout import prompt_layout
    cfg = load_shape_config("qwen2.5-vl-7b")
    batch = model_inputs(cfg, prompt_layout(cfg), batch=2, text_tokens=128)
"""

from __future__ import annotations

import torch

from dpvr.shapes.layout import PromptLayout, shape_meta

FAMILIES = ("llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "gemma3", "internvl", "idefics3",
            "smolvlm", "mistral3")


def _size(x) -> int:
    return x[0] if isinstance(x, (list, tuple)) else x


def _special_ids(config) -> set[int]:
    keys = ("image_token_id", "video_token_id", "image_token_index", "video_token_index", "vision_start_token_id",
            "vision_end_token_id", "boi_token_index", "eoi_token_index")
    return {getattr(config, k) for k in keys if isinstance(getattr(config, k, None), int)}


def token_ids(config, layout: PromptLayout, batch: int, text_tokens: int, generator: torch.Generator) -> torch.Tensor:
    """Prompt ids: the family's image / video id at visual positions, random ordinary ids elsewhere
    (Qwen: ``vision_start`` / ``vision_end`` around each visual run)."""
    vocab = config.get_text_config().vocab_size
    kinds = layout.kinds(text_tokens)
    ids = torch.randint(4, vocab, (batch, len(kinds)), generator=generator)
    for bad in _special_ids(config):
        ids = torch.where(ids == bad, ids.new_tensor(4), ids)
    for kind, key in (("image", "image_token_id"), ("video", "video_token_id")):
        at = torch.from_numpy(kinds == kind)
        if at.any():
            ids[:, at] = getattr(config, key)
    if config.model_type in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        visual = kinds != "text"
        starts = [i for i in range(1, len(kinds)) if visual[i] and not visual[i - 1]]
        ends = [i for i in range(len(kinds) - 1) if visual[i] and not visual[i + 1]]
        ids[:, [s - 1 for s in starts]] = config.vision_start_token_id
        ids[:, [e + 1 for e in ends]] = config.vision_end_token_id
    return ids


def _qwen_grids(config, layout: PromptLayout) -> list[tuple[str, int, int, int]]:
    """(kind, t, h, w) patch grid of each visual input: the adapter's rule, the one the layout counted tokens with."""
    from dpvr.backbones import adapter_class

    rule, proc = adapter_class(config.model_type), shape_meta(config).get("processor") or {}
    return [(v.kind, *rule.visual_grid(config, v, proc)) for v in layout.visuals]


def pixel_inputs(config, layout: PromptLayout, batch: int, generator: torch.Generator,
                 dtype: torch.dtype = torch.float32) -> dict:
    """The pixel tensors (and their size/grid companions) ``config``'s model takes for ``batch`` prompts
    laid out as ``layout``."""
    family = config.model_type
    if family not in FAMILIES:
        raise ValueError(f"no input builder for model type {family!r}: supported families are {', '.join(FAMILIES)}")

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(dtype)

    vc = config.vision_config
    images = [v for v in layout.visuals if v.kind == "image"]
    videos = [v for v in layout.visuals if v.kind == "video"]
    out: dict = {}
    if family in ("llava", "gemma3"):
        if images:
            out["pixel_values"] = randn(batch * len(images), vc.num_channels, vc.image_size, vc.image_size)
    elif family in ("llava_next", "llava_onevision"):
        if images:
            crops = [u for v, u in zip(layout.visuals, layout.units) if v.kind == "image"]
            out["pixel_values"] = randn(batch * len(images), max(crops), vc.num_channels, vc.image_size, vc.image_size)
            out["image_sizes"] = torch.tensor([[v.height, v.width] for v in images] * batch)
        if videos:
            frames = videos[0].frames
            if any(v.frames != frames for v in videos):
                raise ValueError("videos of one prompt must have the same number of frames here")
            out["pixel_values_videos"] = randn(batch * len(videos), frames, vc.num_channels, vc.image_size,
                                               vc.image_size)
    elif family in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        row = (getattr(vc, "in_channels", None) or getattr(vc, "in_chans", 3)) * vc.temporal_patch_size * vc.patch_size**2
        for kind, key, grid_key in (("image", "pixel_values", "image_grid_thw"),
                                    ("video", "pixel_values_videos", "video_grid_thw")):
            grids = [(t, h, w) for k, t, h, w in _qwen_grids(config, layout) if k == kind] * batch
            if grids:
                out[key] = randn(sum(t * h * w for t, h, w in grids), row)
                out[grid_key] = torch.tensor(grids)
    elif family == "internvl":
        size = _size(vc.image_size)
        out["pixel_values"] = randn(batch * sum(layout.units), vc.num_channels, size, size)
    elif family in ("idefics3", "smolvlm"):
        size = vc.image_size
        out["pixel_values"] = randn(batch, sum(layout.units), vc.num_channels, size, size)
        out["pixel_attention_mask"] = torch.ones(batch, sum(layout.units), size, size, dtype=torch.bool)
    else:  # mistral3: the resized image, (rows·28) x (cols·28) px
        step = vc.patch_size * config.spatial_merge_size
        shapes = []
        for v in images:
            runs = [n for kind, n in layout.runs if kind == "image"]
            shapes.append((len(runs) * step, runs[0] * step))
        if len(set(shapes)) > 1:
            raise ValueError("images of one mistral3 prompt must have the same size here")
        if shapes:
            h, w = shapes[0]
            out["pixel_values"] = randn(batch * len(images), vc.num_channels, h, w)
            out["image_sizes"] = torch.tensor([[h, w]] * (batch * len(images)))
    return out


def model_inputs(config, layout: PromptLayout, batch: int, text_tokens: int, seed: int = 0,
                 dtype: torch.dtype = torch.float32) -> dict:
    """``input_ids``, ``attention_mask``, the pixel inputs and the token-type ids the family asks for."""
    g = torch.Generator().manual_seed(seed)
    ids = token_ids(config, layout, batch, text_tokens, g)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    out.update(pixel_inputs(config, layout, batch, g, dtype))
    kinds = torch.from_numpy((layout.kinds(text_tokens) == "image") * 1 + (layout.kinds(text_tokens) == "video") * 2)
    if config.model_type in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        out["mm_token_type_ids"] = kinds.expand(batch, -1).clone()
    if config.model_type == "gemma3":
        out["token_type_ids"] = (kinds == 1).long().expand(batch, -1).clone()
    return out
