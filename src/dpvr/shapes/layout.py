"""Prompt layouts of every family: visual tokens per image or video by the family's own rule.

A prompt is ``system`` text tokens, then the visual inputs (each expanded into the runs of tokens
its family's processor writes), then the user's text. Visual inputs are counted with the rule of
the family's processor in ``transformers`` 5.24, from the image size (and frame count), not a
fixed CLIP grid. The rules live in the backbone adapters (``visual_runs`` of each
:mod:`dpvr.backbones` family), so the FLOPs model and the benchmark prompts
(:mod:`dpvr.efficiency.inputs`) count the same tokens by construction:

=================  ================================================================================
llava              (image_size / patch)² per image (+1 with the ``full`` feature strategy)
llava_next         anyres: base view + the best pinpoint's tiles, unpadded, + one newline per row
llava_onevision    as NeXT with ``anyres_max_9`` downscaling; a video: frames · ⌈side/2⌉² + 1
qwen2(_5)_vl       ``smart_resize`` to multiples of patch·merge, (h/14)(w/14)/4 tokens, 2 frames per
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
def visual_runs(config, visual: Visual, processor: dict | None = None) -> tuple[list[tuple[str, int]], int]:
    """The token runs one visual input expands into, and the units its vision tower encodes
    (crops, tiles, temporal groups), by the rule of ``config.model_type``'s backbone adapter
    (:meth:`dpvr.backbones.BackboneAdapter.visual_runs`, the one home of these counts)."""
    from dpvr.backbones import adapter_class

    adapter = adapter_class(config.model_type)  # an unknown family: one line naming the supported ones
    if visual.kind not in adapter.visual_kinds():
        raise ValueError(f"{config.model_type} takes no {visual.kind} input: it takes "
                         f"{' and '.join(adapter.visual_kinds())}")
    return adapter.visual_runs(config, visual, processor or {})


def shape_meta(config) -> dict:
    """The shape's ``_dpvr`` block (split, system tokens, layouts, processor settings); defaults for a
    plain LLaVA config: 35 system tokens, one image at the tower's size."""
    meta = dict(getattr(config, "_dpvr_shape", None) or {})
    size = getattr(config.vision_config, "image_size", None)  # Qwen and Pixtral towers name none: no default layout
    if "layouts" not in meta and size is not None:
        size = size[0] if isinstance(size, (list, tuple)) else size
        meta["layouts"] = {"image": [{"kind": "image", "height": size, "width": size}]}
    meta.setdefault("system_tokens", 35)
    return meta


def prompt_layout(config, which: str | None = None, visuals: list[Visual] | None = None,
                  system_tokens: int | None = None) -> PromptLayout:
    """The layout of a prompt for ``config``: the shape's named layout (``which``: "image", "video"; the
    first one by default) or the given ``visuals``; ``system_tokens`` overrides the shape's."""
    meta = shape_meta(config)
    if visuals is None:
        layouts = meta.get("layouts")
        if not layouts:
            raise ValueError(f"{config.model_type} config has no prompt layout (no _dpvr layouts, no vision image "
                             "size): pass the visual inputs")
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
                        bidirectional=_adapter(config).bidirectional_visual, split=meta.get("split"),
                        units=tuple(units))


def _adapter(config):
    from dpvr.backbones import adapter_class

    return adapter_class(config.model_type)
