"""Question families asked about the generated images, in LLaVA-1.5's instruction formats.

Each ``ask_<family>(rng, scene)`` returns a :class:`QA` about a given shape scene (or ``None``
when the scene does not support that question), so that one scene can carry several questions
in a multi-turn training conversation. ``sample_<family>`` draws a scene suited to the family
and a question about it; the benchmark uses those to control the answer balance.

A question is a *stem* ("Is there a red circle in the image?") plus a format instruction. The
benchmarks use the instructions of the stock lmms-eval tasks they resemble (LLaVA-1.5's: ``SHORT``
for short answers and POPE, ``LETTER`` for multiple choice); training conversations mix those with
dpvr's own ``YESNO``, MME's inline ``MME_YESNO`` and free-form questions answered by a sentence
(:func:`restyle`), so a model answers the formats people actually prompt with. :func:`reword` turns a
benchmark record into another wording (``dpvr``: yes/no questions end in ``YESNO``, as generator
version 5 wrote them).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from dpvr.data.scenes import COLORS, OBJECTS, SHAPES, Shape, object_name, popular_objects, sample_scene

YESNO = "Answer with yes or no."
SHORT = "Answer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."
MME_YESNO = "Please answer yes or no."  # MME's, on the question's own line
#: Benchmark wordings: ``llava`` (the stock lmms-eval tasks' suffixes) and ``dpvr`` (yes/no ends in YESNO).
WORDINGS: tuple[str, ...] = ("llava", "dpvr")
#: Instructions read back by :func:`stem`, longest first.
_SUFFIXES = (LETTER, SHORT, YESNO, MME_YESNO)

FAMILIES: tuple[str, ...] = ("pope", "mc", "count", "color", "spatial", "digit")
POPE_CATEGORIES: tuple[str, ...] = ("random", "popular", "adversarial")
#: Accuracy of uniform guessing, per family (in %).
CHANCE: dict[str, float] = {"pope": 50.0, "mc": 25.0, "count": 25.0, "color": 100 / len(COLORS),
                            "spatial": 50.0, "digit": 10.0}
MAX_OBJECTS = 4
LETTERS = "ABCD"


@dataclass
class QA:
    question: str  # full user text (without the image placeholder)
    answer: str
    family: str
    category: str
    options: list[str] | None = field(default=None)
    sentence: str | None = field(default=None)  # the answer as a sentence (free-form wording)


def _a(phrase: str) -> str:
    """``phrase`` with its indefinite article."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _yes_no(flag: bool) -> str:
    return "Yes" if flag else "No"


# --------------------------------------------------------------------------- POPE

def _absent(scene: list[Shape]) -> list[tuple[str, str]]:
    present = {s.obj for s in scene}
    return [o for o in OBJECTS if o not in present]


def pope_negative(rng: random.Random, scene: list[Shape], category: str) -> tuple[str, str]:
    """An object absent from ``scene``, sampled the way POPE's ``category`` samples negatives.

    random: uniform over absent objects; popular: among the 3 most frequent absent objects;
    adversarial: one attribute (colour or shape) away from a present object.
    """
    absent = _absent(scene)
    if category == "random":
        return rng.choice(absent)
    if category == "popular":
        ranked = [o for o in popular_objects() if o in absent]
        return rng.choice(ranked[:3])
    if category == "adversarial":
        near = sorted({o for s in scene for o in absent if (o[0] == s.color) != (o[1] == s.shape)},
                      key=OBJECTS.index)
        return rng.choice(near)
    raise ValueError(f"unknown POPE category {category!r}; expected one of {POPE_CATEGORIES}")


def ask_pope(rng: random.Random, scene: list[Shape], category: str | None = None,
             answer: bool | None = None) -> QA:
    category = category or rng.choice(POPE_CATEGORIES)
    answer = rng.random() < 0.5 if answer is None else answer
    obj = rng.choice(scene).obj if answer else pope_negative(rng, scene, category)
    name = _a(object_name(obj))
    q = f"Is there {name} in the image?\n{SHORT}"
    sentence = f"Yes, there is {name} in the image." if answer else f"No, there is no {object_name(obj)} in the image."
    return QA(q, _yes_no(answer), "pope", category, sentence=sentence)


def sample_pope(rng: random.Random, category: str, answer: bool) -> tuple[list[Shape], QA]:
    scene = sample_scene(rng, rng.randint(1, MAX_OBJECTS))
    return scene, ask_pope(rng, scene, category, answer)


# --------------------------------------------------------------------------- count

def ask_count(rng: random.Random, scene: list[Shape]) -> QA:
    q = f"How many objects are there in the image?\n{SHORT}"
    n = len(scene)
    sentence = "There is 1 object in the image." if n == 1 else f"There are {n} objects in the image."
    return QA(q, str(n), "count", "objects", sentence=sentence)


def sample_count(rng: random.Random, n: int) -> tuple[list[Shape], QA]:
    scene = sample_scene(rng, n)
    return scene, ask_count(rng, scene)


# --------------------------------------------------------------------------- colour

def _unique_shapes(scene: list[Shape]) -> list[Shape]:
    return [s for s in scene if sum(o.shape == s.shape for o in scene) == 1]


def _unique_colors(scene: list[Shape]) -> list[Shape]:
    return [s for s in scene if sum(o.color == s.color for o in scene) == 1]


def ask_color(rng: random.Random, scene: list[Shape], target: str | None = None) -> QA | None:
    """``target``: only ask about an object of this colour (None: any)."""
    cands = [s for s in _unique_shapes(scene) if target is None or s.color == target]
    if not cands:
        return None
    s = rng.choice(cands)
    return QA(f"What color is the {s.shape}?\n{SHORT}", s.color, "color", s.shape,
              sentence=f"The {s.shape} is {s.color}.")


def _until(rng: random.Random, ask, num_objects=None) -> tuple[list[Shape], QA]:
    """Draw scenes until ``ask(scene)`` returns a question."""
    while True:
        scene = sample_scene(rng, num_objects or rng.randint(1, MAX_OBJECTS))
        qa = ask(scene)
        if qa is not None:
            return scene, qa


def sample_color(rng: random.Random) -> tuple[list[Shape], QA]:
    """The answer colour is drawn uniformly first (object frequencies are skewed, and a benchmark
    whose answers follow them rewards guessing the frequent colour without looking)."""
    target = rng.choice(list(COLORS))
    return _until(rng, lambda scene: ask_color(rng, scene, target))


# --------------------------------------------------------------------------- spatial

#: axis -> (question template, the two answers in the order the question names them)
SPATIAL_AXES = {"horizontal": ("Is the {a} to the left or to the right of the {b}?", ("left", "right")),
                "vertical": ("Is the {a} above or below the {b}?", ("above", "below"))}
MIN_GAP = 16  # pixels between centres along the asked axis


def _first_option_holds(a: Shape, b: Shape, axis: str) -> bool | None:
    """Whether ``a`` is left of / above ``b``; None when the question would be ambiguous.

    Asked only when the two centres are at least ``MIN_GAP`` apart along the axis and on
    opposite halves of the image, so the answer is unambiguous at a glance.
    """
    from dpvr.data.scenes import IMAGE_SIZE

    ca, cb = (a.cx, b.cx) if axis == "horizontal" else (a.cy, b.cy)
    half = IMAGE_SIZE / 2
    if abs(ca - cb) < MIN_GAP or (ca - half) * (cb - half) >= 0:
        return None
    return ca < cb


def ask_spatial(rng: random.Random, scene: list[Shape], first: bool | None = None) -> QA | None:
    """"Is the red circle to the left or to the right of the blue square?" -> "left" / "right".

    GQA's phrasing: both answers are named in the question, so chance is 50 %. The two objects
    have colours unique in the scene (the relation, not shape recognition, is what is asked;
    version 3 of the generator asked yes/no about any pair and the tiny model stayed at chance).
    ``first``: whether the answer is the first option named (left / above); None: either.
    """
    unique = _unique_colors(scene)
    if len(unique) < 2:
        return None
    cands = [(a, b, axis, holds) for a in unique for b in unique if a is not b for axis in SPATIAL_AXES
             if (holds := _first_option_holds(a, b, axis)) is not None and (first is None or holds is first)]
    if not cands:
        return None
    a, b, axis, holds = rng.choice(cands)
    template, answers = SPATIAL_AXES[axis]
    q = template.format(a=object_name(a.obj), b=object_name(b.obj)) + f"\n{SHORT}"
    answer = answers[0] if holds else answers[1]
    relation = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}[answer]
    sentence = f"The {object_name(a.obj)} is {relation} the {object_name(b.obj)}."
    return QA(q, answer, "spatial", axis, sentence=sentence)


def sample_spatial(rng: random.Random, first: bool) -> tuple[list[Shape], QA]:
    """A two-object scene and a relation question about it."""
    return _until(rng, lambda scene: ask_spatial(rng, scene, first), num_objects=2)


# --------------------------------------------------------------------------- multiple choice

def _options_block(options: list[str]) -> str:
    return "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))


def ask_mc(rng: random.Random, scene: list[Shape], kind: str | None = None,
           target: str | None = None) -> QA | None:
    """``target``: only ask about an object whose asked attribute (shape or colour) is this."""
    kind = kind or rng.choice(("shape", "color"))
    if kind == "shape":
        cands = [s for s in _unique_colors(scene) if target is None or s.shape == target]
        if not cands:
            return None
        s = rng.choice(cands)
        options = rng.sample(SHAPES, len(SHAPES))
        correct, stem = s.shape, f"What shape is the {s.color} object?"
    else:
        cands = [s for s in _unique_shapes(scene) if target is None or s.color == target]
        if not cands:
            return None
        s = rng.choice(cands)
        others = rng.sample([c for c in COLORS if c != s.color], 3)
        options = rng.sample([s.color] + others, 4)
        correct, stem = s.color, f"What color is the {s.shape}?"
    q = f"{stem}\n{_options_block(options)}\n{LETTER}"
    return QA(q, LETTERS[options.index(correct)], "mc", kind, options)


def sample_mc(rng: random.Random, kind: str) -> tuple[list[Shape], QA]:
    """The answer is drawn uniformly first, as in :func:`sample_color` (generator version 4 drew it
    with the object frequencies, and always picking the most frequent option scored 42 %)."""
    target = rng.choice(SHAPES if kind == "shape" else list(COLORS))
    return _until(rng, lambda scene: ask_mc(rng, scene, kind, target))


# --------------------------------------------------------------------------- digits

def ask_digit(label: int) -> QA:
    return QA(f"What digit is written in the image?\n{SHORT}", str(label), "digit", str(label),
              sentence=f"The digit is {label}.")


def ask_digit_color(color: str) -> QA:
    return QA(f"What color is the digit?\n{SHORT}", color, "digit_color", color, sentence=f"The digit is {color}.")


# --------------------------------------------------------------------------- captions, text-only

CAPTION_PROMPTS = ("Describe the image briefly.", "What is in the image?",
                   "Give a short description of the image.", "List the objects in the image.")


def caption_scene(scene: list[Shape]) -> str:
    """All objects, left to right, each with colour, shape and coarse position."""
    from dpvr.data.scenes import position_words

    parts = []
    for s in sorted(scene, key=lambda s: (s.cx, s.cy)):
        where = position_words(s)
        parts.append(f"{_a(object_name(s.obj))} {'in the' if where == 'center' else 'at the'} {where}")
    n = len(parts)
    text = parts[0] if n == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    word = ["one object", "two objects", "three objects", "four objects"][n - 1]
    return f"{word}: {text}."


def caption_digit(label: int, color: str) -> str:
    return f"{_a(color)} handwritten digit {label}."


def text_only(rng: random.Random) -> QA:
    kind = rng.randrange(3)
    if kind == 0:
        shape = rng.choice(("square", "triangle"))
        n = {"square": "4", "triangle": "3"}[shape]
        return QA(f"How many corners does a {shape} have?\n{SHORT}", n, "text", "corners",
                  sentence=f"A {shape} has {n} corners.")
    if kind == 1:
        word = rng.choice(list(COLORS) + list(SHAPES))
        is_color = word in COLORS
        return QA(f"Is {word} a color?\n{YESNO}", _yes_no(is_color), "text", "is_color",
                  sentence=f"Yes, {word} is a color." if is_color else f"No, {word} is not a color.")
    a, b = rng.randint(1, 4), rng.randint(0, 4)
    return QA(f"What is {a} plus {b}?\n{SHORT}", str(a + b), "text", "sum", sentence=f"{a} plus {b} is {a + b}.")


# --------------------------------------------------------------------------- reading questions back

def stem(question: str) -> str:
    """A user turn without the ``<image>`` placeholder and without its format instruction (any of
    LLaVA-1.5's, MME's or dpvr's; multiple choice keeps its option lines)."""
    q = question.replace("<image>", "").strip()
    for suffix in _SUFFIXES:
        if q.endswith(suffix):
            return q[: -len(suffix)].rstrip()
    return q


def _stem(question: str) -> str:
    """First line of a user turn's :func:`stem`."""
    return stem(question).split("\n", 1)[0]


def restyle(rng: random.Random, qa: QA) -> QA:
    """``qa`` in one of the wordings training uses (same content; generator version 6).

    Yes/no questions: dpvr's ``YESNO`` (35 %), LLaVA-1.5's short-answer ``SHORT`` as in lmms-eval's
    POPE (35 %), MME's inline ``MME_YESNO`` (15 %), free-form (15 %: no instruction, answered by
    the sentence). Other short-answer questions: ``SHORT`` (85 %) or free-form (15 %). Multiple
    choice keeps ``LETTER`` and captions their prompts (both already in LLaVA's formats).
    """
    if qa.options is not None or qa.sentence is None:
        return qa
    base, r = stem(qa.question), rng.random()
    if qa.answer in ("Yes", "No"):
        if r < 0.35:
            return replace(qa, question=f"{base}\n{YESNO}")
        if r < 0.70:
            return replace(qa, question=f"{base}\n{SHORT}")
        if r < 0.85:
            return replace(qa, question=f"{base} {MME_YESNO}")
        return replace(qa, question=base, answer=qa.sentence)
    if r < 0.15:
        return replace(qa, question=base, answer=qa.sentence)
    return replace(qa, question=f"{base}\n{SHORT}")


def reword(record: dict, wording: str) -> dict:
    """A benchmark record in ``wording`` (:data:`WORDINGS`): only yes/no questions differ —
    ``llava`` ends them in ``SHORT`` (lmms-eval's POPE task), ``dpvr`` in ``YESNO``."""
    if wording not in WORDINGS:
        raise ValueError(f"unknown wording {wording!r}; choose one of {', '.join(WORDINGS)}")
    if str(record.get("answer")) not in ("Yes", "No") or record.get("options"):
        return record
    suffix = SHORT if wording == "llava" else YESNO
    return dict(record, question=f"{stem(record['question'])}\n{suffix}")


#: (start, middle) of each spatial template: "Is the " ... " to the left or to the right of the "
_SPATIAL_PARTS = tuple((t.split("{a}")[0], t.split("{a}")[1].split("{b}")[0]) for t, _ in SPATIAL_AXES.values())


def family_of_question(question: str) -> str:
    """The family a generated question belongs to, read back from its wording.

    ``question`` is a user turn as the generator writes it (the ``<image>`` line, if any, is
    ignored). Returns one of :data:`FAMILIES`, ``"digit_color"``, ``"caption"``, ``"text"``.
    """
    stem = _stem(question)
    if question.rstrip().endswith(LETTER):
        return "mc"
    if stem in CAPTION_PROMPTS:
        return "caption"
    if stem.startswith("Is there ") and stem.endswith(" in the image?"):
        return "pope"
    if stem == "How many objects are there in the image?":
        return "count"
    if stem == "What digit is written in the image?":
        return "digit"
    if stem == "What color is the digit?":
        return "digit_color"
    if any(stem.startswith(start) and middle in stem for start, middle in _SPATIAL_PARTS):
        return "spatial"
    if stem.startswith("What color is the "):
        return "color"
    return "text"


def mc_options(question: str) -> dict[str, str]:
    """Letter -> option text of a generated multiple-choice question (what ``_options_block`` wrote)."""
    return {line[0]: line[3:] for line in question.split("\n")[1:] if line[:1] in LETTERS and line[1:3] == ". "}


def mc_kind(question: str) -> str:
    """``"shape"`` or ``"color"``: what a generated multiple-choice question asks for."""
    return "shape" if _stem(question).startswith("What shape is ") else "color"
