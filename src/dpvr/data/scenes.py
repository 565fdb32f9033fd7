"""Scene vocabulary and rendering for the generated benchmarks.

Two kinds of 64x64 RGB images are drawn with PIL (deterministic, no anti-aliasing):

* shape scenes: 1-4 non-overlapping shapes (``SHAPES`` x ``COLORS``) on one of a few light
  background tints;
* digit images: one handwritten digit from scikit-learn's bundled ``load_digits`` set (8x8
  bitmaps), scaled up, coloured and placed on a tinted background.

Everything here takes an explicit ``random.Random`` so that a seed fixes every pixel.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 200, 0),
    "purple": (140, 40, 170),
    "orange": (245, 120, 0),
}
BACKGROUNDS: tuple[tuple[int, int, int], ...] = (
    (250, 250, 250), (225, 225, 225), (240, 232, 215), (220, 230, 240),
)
#: All (colour, shape) objects. Their sampling weights are skewed (Zipf-like over a fixed,
#: seed-independent order) so that POPE's "popular" negatives mean something.
OBJECTS: tuple[tuple[str, str], ...] = tuple((c, s) for s in SHAPES for c in COLORS)


def object_name(obj: tuple[str, str]) -> str:
    return f"{obj[0]} {obj[1]}"


@lru_cache(maxsize=None)
def object_weights() -> tuple[float, ...]:
    """Sampling weight of each entry of ``OBJECTS`` (fixed, skewed: ~1/rank**0.8)."""
    order = random.Random(1234).sample(range(len(OBJECTS)), len(OBJECTS))
    w = [0.0] * len(OBJECTS)
    for rank, idx in enumerate(order):
        w[idx] = 1.0 / (rank + 1) ** 0.8
    total = sum(w)
    return tuple(x / total for x in w)


def popular_objects() -> list[tuple[str, str]]:
    """Objects sorted from most to least frequent (the ground truth for POPE 'popular')."""
    w = object_weights()
    return [OBJECTS[i] for i in sorted(range(len(OBJECTS)), key=lambda i: -w[i])]


@dataclass(frozen=True)
class Shape:
    color: str
    shape: str
    x: int  # left
    y: int  # top
    size: int

    @property
    def obj(self) -> tuple[str, str]:
        return (self.color, self.shape)

    @property
    def cx(self) -> float:
        return self.x + self.size / 2

    @property
    def cy(self) -> float:
        return self.y + self.size / 2


def position_words(s: Shape) -> str:
    """Coarse position of a shape: 'top left', 'center', 'bottom', ..."""
    third = IMAGE_SIZE / 3
    v = "top" if s.cy < third else ("bottom" if s.cy >= 2 * third else "")
    h = "left" if s.cx < third else ("right" if s.cx >= 2 * third else "")
    words = " ".join(w for w in (v, h) if w)
    return words or "center"


def sample_scene(rng: random.Random, num_objects: int, min_size: int = 18, max_size: int = 26,
                 distinct: bool = True) -> list[Shape]:
    """Place ``num_objects`` non-overlapping shapes (distinct objects when ``distinct``)."""
    weights = object_weights()
    for _ in range(1000):
        objs: list[tuple[str, str]] = []
        while len(objs) < num_objects:
            o = rng.choices(OBJECTS, weights=weights)[0]
            if not distinct or o not in objs:
                objs.append(o)
        shapes: list[Shape] = []
        ok = True
        for color, shape in objs:
            for _ in range(200):
                size = rng.randint(min_size, max_size)
                x = rng.randint(1, IMAGE_SIZE - size - 1)
                y = rng.randint(1, IMAGE_SIZE - size - 1)
                if all(x + size + 2 <= o.x or o.x + o.size + 2 <= x or y + size + 2 <= o.y
                       or o.y + o.size + 2 <= y for o in shapes):
                    shapes.append(Shape(color, shape, x, y, size))
                    break
            else:
                ok = False
                break
        if ok:
            return shapes
    raise RuntimeError(f"could not place {num_objects} shapes without overlap")


def render_scene(shapes: list[Shape], background: tuple[int, int, int]) -> Image.Image:
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), background)
    d = ImageDraw.Draw(img)
    for s in shapes:
        fill = COLORS[s.color]
        x0, y0, x1, y1 = s.x, s.y, s.x + s.size - 1, s.y + s.size - 1
        if s.shape == "circle":
            d.ellipse((x0, y0, x1, y1), fill=fill)
        elif s.shape == "square":
            m = s.size // 10
            d.rectangle((x0 + m, y0 + m, x1 - m, y1 - m), fill=fill)
        elif s.shape == "triangle":
            d.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
        elif s.shape == "cross":
            t = max(2, s.size // 3)
            c0 = x0 + (s.size - t) // 2
            r0 = y0 + (s.size - t) // 2
            d.rectangle((c0, y0, c0 + t - 1, y1), fill=fill)
            d.rectangle((x0, r0, x1, r0 + t - 1), fill=fill)
        else:  # pragma: no cover - guarded by SHAPES
            raise ValueError(f"unknown shape {s.shape!r}")
    return img


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32) / 16.0, d.target.astype(np.int64)


def digit_split(split: str) -> list[int]:
    """Indices of ``load_digits`` bitmaps reserved for ``split`` ('train' or 'test').

    The split is fixed (independent of the generator seed): 80 % of each class for training,
    the rest for testing, so test digits are always drawn from unseen handwriting.
    """
    images, labels = _digits()
    order = random.Random(20240611).sample(range(len(labels)), len(labels))
    train, test = [], []
    seen = [0] * 10
    per_class = np.bincount(labels, minlength=10)
    for i in order:
        c = int(labels[i])
        (train if seen[c] < int(0.8 * per_class[c]) else test).append(i)
        seen[c] += 1
    return sorted(train if split == "train" else test)


@dataclass(frozen=True)
class Digit:
    index: int  # row of load_digits
    label: int
    color: str
    x: int
    y: int
    size: int


def sample_digit(rng: random.Random, index: int, color: str, min_size: int = 44, max_size: int = 52,
                 jitter: int = 4) -> Digit:
    """Place bitmap ``index`` of ``load_digits`` near the centre (MNIST-like), slightly jittered."""
    _, labels = _digits()
    size = rng.randint(min_size, max_size)
    c = (IMAGE_SIZE - size) // 2
    x = min(max(0, c + rng.randint(-jitter, jitter)), IMAGE_SIZE - size)
    y = min(max(0, c + rng.randint(-jitter, jitter)), IMAGE_SIZE - size)
    return Digit(index, int(labels[index]), color, x, y, size)


def render_digit(d: Digit, background: tuple[int, int, int]) -> Image.Image:
    """Scale the bitmap up (bilinear), colour it and blend it onto the background."""
    images, _ = _digits()
    ink = Image.fromarray((images[d.index] * 255).astype(np.uint8), mode="L").resize(
        (d.size, d.size), Image.BILINEAR)
    alpha = np.asarray(ink, dtype=np.float32)[..., None] / 255.0  # (size, size, 1)
    canvas = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
    canvas[:] = background
    patch = canvas[d.y:d.y + d.size, d.x:d.x + d.size]
    canvas[d.y:d.y + d.size, d.x:d.x + d.size] = patch * (1 - alpha) + np.asarray(COLORS[d.color], np.float32) * alpha
    return Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8), mode="RGB")


def scene_twin(rng: random.Random, scene: list[Shape]) -> list[Shape]:
    """The same scene with the shape of one object changed (its colour if no shape is free).

    Used as a hard negative for contrastive pretraining: telling the two apart needs the
    binding of colour to shape, which POPE's adversarial questions ask about.
    """
    present = {s.obj for s in scene}
    k = rng.randrange(len(scene))
    s = scene[k]
    # Change the shape: colour alone already tells most scenes apart, shape is what needs learning.
    cands = [(s.color, sh) for sh in SHAPES if sh != s.shape and (s.color, sh) not in present]
    if not cands:
        cands = [(c, s.shape) for c in COLORS if c != s.color and (c, s.shape) not in present]
    color, shape = rng.choice(cands)
    return scene[:k] + [Shape(color, shape, s.x, s.y, s.size)] + scene[k + 1:]


def digit_twin(rng: random.Random, d: Digit, pool: list[int]) -> Digit:
    """The same placement and colour with a bitmap of another digit class from ``pool``."""
    _, labels = _digits()
    others = [i for i in pool if int(labels[i]) != d.label]
    idx = rng.choice(others)
    return Digit(idx, int(labels[idx]), d.color, d.x, d.y, d.size)
