"""Prompt layouts of every family: visual tokens per image or video by the family's own rule.

A prompt is ``system`` text tokens, then the visual inputs (each expanded into the runs of tokens
its family's processor writes), then the user's text. Visual inputs are counted with the rule of
the family's processor in ``transformers`` 5.24, from the image size (and frame count), not a
fixed CLIP grid:

=================  ================================================================================
llava              (image_size / patch)² per image (+1 with the ``full`` feature strategy)
llava_next         anyres: base view + the best pinpoint's tiles, unpadded, + one newline per row
llava_onevision    as NeXT with ``anyres_max_9`` downscaling; a video: frames · ⌈side/2⌉² + 1
qwen2_5_vl         ``smart_resize`` to multiples of patch·merge, (h/14)(w/14)/4 tokens, 2 frames per
                   temporal patch; ``<|vision_start|>``/``<|vision_end|>`` are text tokens
qwen3_vl           as Qwen2.5-VL with 16-px patches; a video is one start…end group per frame pair,
                   each after a ``<t seconds>`` timestamp (text)
gemma3             ``mm_tokens_per_image`` (256) per image between ``<start_of_image>``/``<end_of_image>``
internvl           256 per 448-px tile (up to ``max_patches`` tiles + a thumbnail) inside ``<img>…</img>``
idefics3, smolvlm  (image_size/patch)²/scale² per 384-px tile + a global image; the tile markers
                   ``<fake_token_around_image>``, ``<row_i_col_j>``, ``<global-img>`` are text
mistral3           one token per 28×28 px (patch 14, 2×2 merge) of the image resized to fit the
                   longest edge; ``[IMG_BREAK]`` after each row and ``[IMG_END]`` are text
=================  ================================================================================

Text runs inside a visual input (markers, timestamps) stay text: routing sends them through the
text-only layers. The number of system tokens is the shape's chat-template estimate (recorded in
its JSON); the visual counts are exact.

Example::

    from dpvr.shapes import load_shape_config
    from dpvr.shapes.layout import prompt_layout
    layout = prompt_layout(load_shape_config("qwen2.5-vl-7b"))           # the shape's default input
    layout.visual_tokens, layout.mask(text_tokens=128).mean()              # 1196, visual share
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

KINDS = ("text", "image", "video")


@dataclass(frozen=True)
class Visual:
    """One visual input of a prompt: an image, or a video of ``frames`` frames, of ``height``×``width`` px."""

    kind: str
    height: int
    width: int
    frames: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ("image", "video"):
            raise ValueError(f"visual kind must be 'image' or 'video', got {self.kind!r}")
        if min(self.height, self.width, self.frames) < 1:
            raise ValueError(f"visual input sizes must be >= 1, got {self.height}x{self.width}, {self.frames} frames")

    @classmethod
    def from_dict(cls, data: dict) -> "Visual":
        return cls(data["kind"], int(data["height"]), int(data["width"]), int(data.get("frames", 1)))


@dataclass(frozen=True)
class PromptLayout:
    """The token runs of a prompt's head: ``system_tokens`` text tokens, then ``runs`` (kind, count)
    for the visual inputs in order. ``bidirectional``: tokens of one visual run attend to each other
    in both directions (Gemma 3). The user's text follows (``text_tokens`` in :meth:`mask`)."""

    name: str
    system_tokens: int
    runs: tuple[tuple[str, int], ...]
    visuals: tuple[Visual, ...] = ()
    bidirectional: bool = False
    split: int | None = None
    units: tuple[int, ...] = field(default=())  # vision-tower units per visual input (tiles, crops, frames)

    @property
    def visual_tokens(self) -> int:
        return sum(n for kind, n in self.runs if kind != "text")

    @property
    def marker_tokens(self) -> int:
        """Text tokens written inside the visual inputs (start/end markers, row breaks, timestamps)."""
        return sum(n for kind, n in self.runs if kind == "text")

    def kinds(self, text_tokens: int) -> np.ndarray:
        """The kind of every prompt position ("text", "image" or "video")."""
        parts = [np.full(self.system_tokens, "text")]
        parts += [np.full(n, kind) for kind, n in self.runs]
        parts.append(np.full(text_tokens, "text"))
        return np.concatenate(parts).astype("<U5")

    def mask(self, text_tokens: int) -> np.ndarray:
        """Visual positions (image and video tokens) of a prompt with ``text_tokens`` user tokens."""
        if text_tokens < 0:
            raise ValueError(f"text_tokens must be >= 0, got {text_tokens}")
        return self.kinds(text_tokens) != "text"

    def groups(self, text_tokens: int) -> np.ndarray | None:
        """Block id of every position of a visual run (-1 elsewhere) when runs attend bidirectionally, else None."""
        if not self.bidirectional:
            return None
        ids, block = [np.full(self.system_tokens, -1)], 0
        for kind, n in self.runs:
            if kind == "text":
                ids.append(np.full(n, -1))
            else:
                ids.append(np.full(n, block))
                block += 1
        ids.append(np.full(text_tokens, -1))
        return np.concatenate(ids).astype(np.int64)

    def visual_share(self, text_tokens: int) -> float:
        return self.visual_tokens / (self.system_tokens + self.visual_tokens + self.marker_tokens + text_tokens)


# ---------------------------------------------------------------------------------------- family rules
def _smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int, frames: int = 1,
                  temporal: int = 1) -> tuple[int, int]:
    """Qwen2-VL's ``smart_resize`` (``frames``/``temporal`` > 1: Qwen3-VL's video variant, whose pixel
    budget covers all frames)."""
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    t_bar = round(frames / temporal) * temporal if temporal > 1 else 1
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt(frames * height * width / max_pixels) if temporal > 1 else math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (frames * height * width)) if temporal > 1 else math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _anyres(config, v: Visual, max_num_patches: int | None) -> tuple[int, int]:
    """LLaVA-NeXT / OneVision processors' count of one image's tokens; also the crops the tower encodes."""
    from transformers.image_processing_utils import select_best_resolution

    vc = config.vision_config
    side = vc.image_size // vc.patch_size
    best_h, best_w = select_best_resolution([v.height, v.width], config.image_grid_pinpoints)
    scale_h, scale_w = best_h // vc.image_size, best_w // vc.image_size
    cur_h, cur_w = side * scale_h, side * scale_w
    if v.width / v.height > cur_w / cur_h:
        new_h = int(round(v.height * (cur_w / v.width), 7))
        cur_h -= (cur_h - new_h) // 2 * 2
    else:
        new_w = int(round(v.width * (cur_h / v.height), 7))
        cur_w -= (cur_w - new_w) // 2 * 2
    unpadded, newlines = cur_h * cur_w, cur_h
    if max_num_patches is not None:
        ratio = math.sqrt(cur_h * cur_w / (max_num_patches * side**2))
        if ratio > 1.1:
            unpadded, newlines = int(cur_h // ratio) * int(cur_w // ratio), int(cur_h // ratio)
    base = side * side + (1 if config.vision_feature_select_strategy == "full" and config.model_type == "llava_next"
                          else 0)
    return unpadded + newlines + base, 1 + scale_h * scale_w


def _llava(config, v: Visual, proc: dict) -> tuple[list, int]:
    vc = config.vision_config
    n = (vc.image_size // vc.patch_size) ** 2 + (1 if config.vision_feature_select_strategy == "full" else 0)
    return [("image", n)], 1


def _llava_next(config, v: Visual, proc: dict) -> tuple[list, int]:
    n, crops = _anyres(config, v, None)
    return [("image", n)], crops


def _llava_onevision(config, v: Visual, proc: dict) -> tuple[list, int]:
    if v.kind == "video":
        side = math.ceil(config.vision_config.image_size // config.vision_config.patch_size / 2)
        return [("video", v.frames * side * side + 1)], v.frames
    n, crops = _anyres(config, v, int(config.vision_aspect_ratio.removeprefix("anyres_max_")))
    return [("image", n)], crops


def _qwen(config, v: Visual, proc: dict) -> tuple[list, int]:
    vc = config.vision_config
    patch, merge, temporal = vc.patch_size, vc.spatial_merge_size, vc.temporal_patch_size
    p = proc.get(v.kind, {})
    qwen3 = config.model_type == "qwen3_vl"
    default_min, default_max = ((65536, 16777216) if qwen3 else (3136, 12845056)) if v.kind == "image" else \
        ((4096, 25165824) if qwen3 else (100352, 602112))
    lo, hi = p.get("min_pixels", default_min), p.get("max_pixels", default_max)
    if v.kind == "video" and qwen3:
        h, w = _smart_resize(v.height, v.width, patch * merge, lo, hi, v.frames, temporal)
    else:
        h, w = _smart_resize(v.height, v.width, patch * merge, lo, hi)
    per_group = (h // patch) * (w // patch) // merge**2
    groups = 1 if v.kind == "image" else -(-v.frames // temporal)
    if v.kind == "video" and qwen3:  # one <t seconds><|vision_start|>…<|vision_end|> per frame pair
        stamp = p.get("timestamp_tokens", 6)
        return [r for _ in range(groups) for r in (("text", stamp + 1), ("video", per_group), ("text", 1))], groups
    return [("text", 1), (v.kind, groups * per_group), ("text", 1)], groups


def _gemma3(config, v: Visual, proc: dict) -> tuple[list, int]:
    return [("text", 1), ("image", config.mm_tokens_per_image), ("text", 2)], 1  # <boi> … <eoi>\n\n


def _internvl(config, v: Visual, proc: dict) -> tuple[list, int]:
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

    vc = config.vision_config
    size = vc.image_size[0] if isinstance(vc.image_size, (list, tuple)) else vc.image_size
    patch = vc.patch_size[0] if isinstance(vc.patch_size, (list, tuple)) else vc.patch_size
    per_tile = int((size // patch) ** 2 * config.downsample_ratio**2)
    max_patches = proc.get("image", {}).get("max_patches", 12)
    cols, rows = get_optimal_tiled_canvas((v.height, v.width), (size, size), 1, max_patches)
    tiles = 1 + (cols * rows if cols * rows > 1 else 0)
    return [("text", 1), ("image", tiles * per_tile), ("text", 1)], tiles  # <img> … </img>


def _idefics3(config, v: Visual, proc: dict) -> tuple[list, int]:
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    vc = config.vision_config
    per_tile = (vc.image_size // vc.patch_size) ** 2 // config.scale_factor**2
    p = proc.get("image", {})
    tile = p.get("tile", vc.image_size)
    _, rows, cols = SmolVLMImageProcessorPil.get_number_of_image_patches(
        SmolVLMImageProcessorPil.__new__(SmolVLMImageProcessorPil), v.height, v.width,
        {"do_image_splitting": True, "size": {"longest_edge": p.get("longest_edge", 4 * tile)},
         "max_image_size": {"longest_edge": tile}})
    runs: list = []
    for _ in range(rows):
        for _ in range(cols):
            runs += [("text", 2), ("image", per_tile)]  # <fake_token_around_image><row_i_col_j>
        runs.append(("text", 1))  # \n
    runs += [("text", 3 if rows else 2), ("image", per_tile), ("text", 1)]  # [\n]<fake><global-img> … <fake>
    return runs, rows * cols + 1


def _mistral3(config, v: Visual, proc: dict) -> tuple[list, int]:
    step = config.vision_config.patch_size * config.spatial_merge_size
    longest = proc.get("image", {}).get("longest_edge", config.vision_config.image_size)
    h, w = v.height, v.width
    ratio = max(h / longest, w / longest)
    if ratio > 1:
        h, w = int(math.floor(h / ratio)), int(math.floor(w / ratio))
    rows, cols = (h - 1) // step + 1, (w - 1) // step + 1
    return [r for _ in range(rows) for r in (("image", cols), ("text", 1))], 1  # [IMG_BREAK]…[IMG_END]


RULES = {
    "llava": _llava,
    "llava_next": _llava_next,
    "llava_onevision": _llava_onevision,
    "qwen2_5_vl": _qwen,
    "qwen2_vl": _qwen,
    "qwen3_vl": _qwen,
    "gemma3": _gemma3,
    "internvl": _internvl,
    "idefics3": _idefics3,
    "smolvlm": _idefics3,
    "mistral3": _mistral3,
}
VIDEO_FAMILIES = ("llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def visual_runs(config, visual: Visual, processor: dict | None = None) -> tuple[list[tuple[str, int]], int]:
    """The token runs one visual input expands into, and the units its vision tower encodes
    (crops, tiles, temporal groups), by the rule of ``config.model_type``."""
    rule = RULES.get(config.model_type)
    if rule is None:
        raise ValueError(f"no prompt-layout rule for model type {config.model_type!r}: "
                         f"supported families are {', '.join(sorted(RULES))}")
    if visual.kind == "video" and config.model_type not in VIDEO_FAMILIES:
        raise ValueError(f"{config.model_type} takes no video input: video families are {', '.join(VIDEO_FAMILIES)}")
    return rule(config, visual, processor or {})


def shape_meta(config) -> dict:
    """The shape's ``_dpvr`` block (split, system tokens, layouts, processor settings); defaults for a
    plain LLaVA config: 35 system tokens, one image at the tower's size."""
    meta = dict(getattr(config, "_dpvr_shape", None) or {})
    if "layouts" not in meta:
        vc = config.vision_config
        size = vc.image_size[0] if isinstance(vc.image_size, (list, tuple)) else vc.image_size
        meta["layouts"] = {"image": [{"kind": "image", "height": size, "width": size}]}
    meta.setdefault("system_tokens", 35)
    return meta


def prompt_layout(config, which: str | None = None, visuals: list[Visual] | None = None,
                  system_tokens: int | None = None) -> PromptLayout:
    """The layout of a prompt for ``config``: the shape's named layout (``which``: "image", "video"; the
    first one by default) or the given ``visuals``; ``system_tokens`` overrides the shape's."""
    meta = shape_meta(config)
    if visuals is None:
        layouts = meta["layouts"]
        which = which or next(iter(layouts))
        if which not in layouts:
            raise ValueError(f"shape has no {which!r} layout: choose one of {', '.join(layouts)}")
        visuals = [Visual.from_dict(d) for d in layouts[which]]
    else:
        which = which or "custom"
    runs, units = [], []
    for v in visuals:
        r, u = visual_runs(config, v, meta.get("processor"))
        runs += r
        units.append(u)
    system = meta["system_tokens"] if system_tokens is None else system_tokens
    if system < 0:
        raise ValueError(f"system_tokens must be >= 0, got {system}")
    return PromptLayout(name=which, system_tokens=system, runs=tuple(runs), visuals=tuple(visuals),
                        bidirectional=config.model_type == "gemma3", split=meta.get("split"), units=tuple(units))
