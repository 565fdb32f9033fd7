"""Questions and scenes of the data generator, checked against hand-made scenes (issue 20's mutation triage).

Every expectation here is worked out by hand from the scene (positions, colours, the templates), so a
question with a wrong answer, a skewed sampler or a mis-read family fails; no test compares a hash.
"""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from dpvr.data import questions as Q
from dpvr.data.scenes import (BACKGROUNDS, COLORS, IMAGE_SIZE, OBJECTS, SHAPES, Digit, Shape, _digits, digit_split,
                              digit_twin, object_weights, popular_objects, position_words, render_digit,
                              render_scene, sample_digit, sample_scene, scene_twin)

BG = BACKGROUNDS[0]


class FixedRng(random.Random):
    """``random()`` returns the given values in turn (to hit a sampler's thresholds exactly)."""

    def __init__(self, *values):
        super().__init__(0)
        self.values = list(values)

    def random(self):
        return self.values.pop(0)


# --------------------------------------------------------------------------- scenes

def test_object_weights_are_a_fixed_zipf_and_popular_follows_them():
    w = object_weights()
    assert len(w) == len(OBJECTS) == 24 and sum(w) == pytest.approx(1.0)
    ranked = sorted(w, reverse=True)
    assert [x / ranked[0] for x in ranked] == pytest.approx([1 / (r + 1) ** 0.8 for r in range(24)])
    pop = popular_objects()
    assert sorted(pop) == sorted(OBJECTS) and [w[OBJECTS.index(o)] for o in pop] == ranked
    assert pop[:3] == [("blue", "triangle"), ("yellow", "circle"), ("red", "circle")]  # fixed, seed-independent


@pytest.mark.parametrize("x,y,size,words", [
    (0, 0, 20, "top left"),        # centre (10, 10)
    (1, 22, 20, "left"),           # centre (11, 32): middle row
    (22, 22, 20, "center"),        # (32, 32)
    (12, 22, 19, "center"),        # cx = 21.5: just past the first third (21.33)
    (12, 22, 18, "left"),          # cx = 21.0
    (34, 22, 17, "center"),        # cx = 42.5: just before 2/3 (42.67)
    (34, 22, 18, "right"),         # cx = 43.0
    (40, 40, 20, "bottom right"),
    (22, 0, 20, "top"),
    (22, 34, 18, "bottom"),        # cy = 43
])
def test_position_words(x, y, size, words):
    assert position_words(Shape("red", "circle", x, y, size)) == words


def test_sample_scene_places_distinct_non_overlapping_shapes_inside_the_image():
    sizes = Counter()
    for seed in range(60):
        n = 1 + seed % 4
        scene = sample_scene(random.Random(seed), n)
        assert len(scene) == n and len({s.obj for s in scene}) == n
        for s in scene:
            sizes[s.size] += 1
            assert s.obj in OBJECTS and 18 <= s.size <= 26
            assert 1 <= s.x and s.x + s.size <= IMAGE_SIZE - 1 and 1 <= s.y and s.y + s.size <= IMAGE_SIZE - 1
        for a in scene:  # at least 2 pixels between any two boxes
            for b in scene:
                if a is not b:
                    assert (a.x + a.size + 2 <= b.x or b.x + b.size + 2 <= a.x
                            or a.y + a.size + 2 <= b.y or b.y + b.size + 2 <= a.y)
    assert min(sizes) == 18 and max(sizes) == 26
    small = sample_scene(random.Random(0), 2, min_size=5, max_size=5)
    assert {s.size for s in small} == {5}


def test_sample_scene_repeats_objects_only_when_asked():
    rng = random.Random(0)
    assert any(len({s.obj for s in sample_scene(rng, 4, min_size=6, max_size=6, distinct=False)}) < 4
               for _ in range(200))


def test_sample_scene_that_cannot_fit_says_so():
    with pytest.raises(RuntimeError, match="could not place 4 shapes"):
        sample_scene(random.Random(0), 4, min_size=40, max_size=40)


def _ink(img) -> np.ndarray:
    """(64, 64) bool: pixels that are not the background."""
    return (np.asarray(img) != np.asarray(BG, np.uint8)).any(-1)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def test_render_scene_draws_each_shape_where_and_how_it_says():
    img = render_scene([Shape("red", "square", 2, 3, 20)], BG)
    assert img.size == (IMAGE_SIZE, IMAGE_SIZE) and img.mode == "RGB"
    px = np.asarray(img)
    ink = _ink(img)
    # square: inset by size // 10 = 2 on each side -> 16 x 16 pixels of exactly the colour
    assert _bbox(ink) == (4, 5, 19, 20) and ink.sum() == 16 * 16
    assert tuple(px[10, 10]) == COLORS["red"] and tuple(px[0, 0]) == BG
    cross = _ink(render_scene([Shape("blue", "cross", 10, 10, 21)], BG))
    # bars 7 wide (21 // 3), centred: columns 17..23 full height, rows 17..23 full width
    assert _bbox(cross) == (10, 10, 30, 30) and cross.sum() == 2 * 7 * 21 - 7 * 7
    assert cross[10, 17] and cross[10, 23] and not cross[10, 16] and not cross[10, 24]
    assert cross[17, 10] and not cross[16, 10] and not cross[10, 10]
    circle = _ink(render_scene([Shape("green", "circle", 5, 5, 20)], BG))
    assert _bbox(circle) == (5, 5, 24, 24) and circle[14, 14] and not circle[5, 5] and not circle[24, 24]
    tri = _ink(render_scene([Shape("yellow", "triangle", 30, 30, 20)], BG))
    assert _bbox(tri) == (30, 30, 49, 49)
    assert tri[49, 30] and tri[49, 49] and not tri[30, 30] and not tri[30, 49]  # base at the bottom, apex up
    two = np.asarray(render_scene([Shape("red", "square", 2, 3, 20), Shape("purple", "circle", 30, 30, 20)], BG))
    assert tuple(two[10, 10]) == COLORS["red"] and tuple(two[40, 40]) == COLORS["purple"]


def test_digit_split_is_fixed_80_20_per_class_and_disjoint():
    _, labels = _digits()
    train, test = digit_split("train"), digit_split("test")
    assert (len(train), len(test)) == (1433, 364) and not set(train) & set(test)
    assert train == sorted(train) and test == sorted(test)
    per = np.bincount(labels, minlength=10)
    assert list(np.bincount(labels[train], minlength=10)) == [int(0.8 * n) for n in per]


def test_sample_and_render_digit():
    _, labels = _digits()
    for seed in range(40):
        d = sample_digit(random.Random(seed), 7, "orange")
        assert (d.index, d.label, d.color) == (7, int(labels[7]), "orange") and 44 <= d.size <= 52
        c = (IMAGE_SIZE - d.size) // 2
        assert abs(d.x - c) <= 4 and abs(d.y - c) <= 4 and 0 <= d.x <= IMAGE_SIZE - d.size
    d = Digit(index=0, label=int(labels[0]), color="blue", x=5, y=9, size=48)
    px = np.asarray(render_digit(d, BG)).astype(int)
    ink = _ink(px.astype(np.uint8))
    x0, y0, x1, y1 = _bbox(ink)
    assert x0 >= 5 and y0 >= 9 and x1 < 5 + 48 and y1 < 9 + 48  # ink only inside the digit's box
    assert (px[~ink] == BG).all()
    # blended: every pixel lies between the background and the ink colour, and the darkest is the colour
    blue, bg = np.array(COLORS["blue"]), np.array(BG)
    t = (bg[0] - px[ink][:, 0]) / (bg[0] - blue[0])  # the ink fraction, read on the channel that moves most
    assert (t >= 0).all() and 0.85 < t.max() <= _digits()[0][0].max() + 0.01  # bitmap 0 peaks at 15/16
    assert np.abs(px[ink] - (bg * (1 - t[:, None]) + blue * t[:, None])).max() <= 1  # same fraction on every channel


def test_twins_change_exactly_one_thing():
    scene = [Shape("red", "circle", 2, 2, 20), Shape("blue", "square", 40, 40, 20)]
    for seed in range(30):
        twin = scene_twin(random.Random(seed), scene)
        diff = [(a, b) for a, b in zip(scene, twin) if a != b]
        assert len(twin) == 2 and len(diff) == 1
        a, b = diff[0]
        assert (b.x, b.y, b.size) == (a.x, a.y, a.size) and b.color == a.color and b.shape != a.shape
        assert b.obj not in {s.obj for s in scene}
    # every shape of red is taken: the twin changes the colour instead
    full = [Shape("red", sh, 2 + 15 * k, 2, 12) for k, sh in enumerate(SHAPES)]
    for seed in range(10):
        twin = scene_twin(random.Random(seed), full)
        (a, b), = [(a, b) for a, b in zip(full, twin) if a != b]
        assert b.shape == a.shape and b.color != "red"
    _, labels = _digits()
    pool = digit_split("train")[:50]
    d = Digit(pool[0], int(labels[pool[0]]), "green", 3, 4, 48)
    for seed in range(10):
        t = digit_twin(random.Random(seed), d, pool)
        assert t.index in pool and t.label == int(labels[t.index]) != d.label
        assert (t.color, t.x, t.y, t.size) == (d.color, d.x, d.y, d.size)


# --------------------------------------------------------------------------- questions

# red circle top left, blue square top right, green triangle bottom left, blue cross bottom right
SCENE = [Shape("red", "circle", 2, 2, 20), Shape("blue", "square", 42, 2, 20),
         Shape("green", "triangle", 2, 42, 20), Shape("blue", "cross", 42, 42, 20)]


def test_pope_negatives_follow_the_category():
    scene = SCENE[:2]
    present = {s.obj for s in scene}
    absent = [o for o in OBJECTS if o not in present]
    draws = {c: Counter(Q.pope_negative(random.Random(s), scene, c) for s in range(300)) for c in Q.POPE_CATEGORIES}
    assert set(draws["random"]) == set(absent)
    assert list(draws["popular"]) and set(draws["popular"]) == set([o for o in popular_objects() if o in absent][:3])
    near = {o for o in absent if any((o[0] == s.color) != (o[1] == s.shape) for s in scene)}
    assert set(draws["adversarial"]) == near and len(near) == 2 * (3 + 5) - 2  # red x or blue x, minus each other
    with pytest.raises(ValueError, match="unknown POPE category 'x'"):
        Q.pope_negative(random.Random(0), scene, "x")


def test_ask_pope():
    qa = Q.ask_pope(random.Random(0), SCENE[:1], "popular", True)
    assert (qa.question, qa.answer, qa.family, qa.category, qa.sentence) == (
        f"Is there a red circle in the image?\n{Q.SHORT}", "Yes", "pope", "popular",
        "Yes, there is a red circle in the image.")
    for seed in range(40):
        qa = Q.ask_pope(random.Random(seed), SCENE[:1], "random", False)
        name = qa.question.split("Is there ", 1)[1].split(" in the image?")[0]
        assert qa.answer == "No" and name.split(" ", 1)[1] != "red circle"
        assert qa.sentence == f"No, there is no {name.split(' ', 1)[1]} in the image."
    orange = Q.ask_pope(FixedRng(0.9), [Shape("orange", "square", 2, 2, 20)], "random", True)
    assert orange.question.startswith("Is there an orange square") and orange.sentence.startswith("Yes, there is an ")
    free = [Q.ask_pope(random.Random(s), SCENE) for s in range(400)]
    assert set(Counter(q.category for q in free)) == set(Q.POPE_CATEGORIES)
    assert 0.4 < sum(q.answer == "Yes" for q in free) / 400 < 0.6


def test_ask_count_and_colour():
    assert Q.ask_count(random.Random(0), SCENE[:1]).sentence == "There is 1 object in the image."
    qa = Q.ask_count(random.Random(0), SCENE)
    assert (qa.question, qa.answer, qa.sentence) == (
        f"How many objects are there in the image?\n{Q.SHORT}", "4", "There are 4 objects in the image.")
    # only shapes that occur once are asked about; the colour is that shape's
    asked = {Q.ask_color(random.Random(s), SCENE).category for s in range(60)}
    assert asked == {"circle", "square", "triangle", "cross"}
    qa = Q.ask_color(random.Random(0), SCENE, target="green")
    assert (qa.question, qa.answer, qa.sentence) == (
        f"What color is the triangle?\n{Q.SHORT}", "green", "The triangle is green.")
    two_circles = [Shape("red", "circle", 2, 2, 20), Shape("blue", "circle", 40, 40, 20)]
    assert Q.ask_color(random.Random(0), two_circles) is None
    assert Q.ask_color(random.Random(0), SCENE, target="purple") is None


def test_first_option_holds():
    a = Shape("red", "circle", 2, 2, 20)  # centre (12, 12)
    far = Shape("blue", "square", 40, 40, 20)  # (50, 50)
    assert Q._first_option_holds(a, far, "horizontal") is True and Q._first_option_holds(far, a, "vertical") is False
    same_half = Shape("blue", "square", 20, 40, 10)  # cx = 25 < 32: same (left) half as a
    assert Q._first_option_holds(a, same_half, "horizontal") is None
    on_midline = Shape("blue", "square", 22, 40, 20)  # cx = 32 exactly: neither half
    assert Q._first_option_holds(a, on_midline, "horizontal") is None
    # gap: centres 15.5 apart (opposite halves) -> too close; 16 apart -> asked
    left, right = Shape("red", "circle", 21, 2, 10), Shape("blue", "square", 36, 2, 11)  # 26, 41.5
    assert Q._first_option_holds(left, right, "horizontal") is None
    right16 = Shape("blue", "square", 37, 2, 10)  # 42
    assert Q._first_option_holds(left, right16, "horizontal") is True


def test_ask_spatial_answers_follow_the_geometry():
    qa = Q.ask_spatial(random.Random(0), [SCENE[0], SCENE[1]])
    assert (qa.question, qa.answer, qa.category) in {
        (f"Is the red circle to the left or to the right of the blue square?\n{Q.SHORT}", "left", "horizontal"),
        (f"Is the blue square to the left or to the right of the red circle?\n{Q.SHORT}", "right", "horizontal")}
    assert qa.sentence in ("The red circle is to the left of the blue square.",
                           "The blue square is to the right of the red circle.")
    vert = Q.ask_spatial(random.Random(0), [SCENE[0], SCENE[2]], first=False)
    assert (vert.question, vert.answer, vert.category, vert.sentence) == (
        f"Is the green triangle above or below the red circle?\n{Q.SHORT}", "below", "vertical",
        "The green triangle is below the red circle.")
    seen = Counter()
    for seed in range(200):  # blue square and blue cross share a colour: never asked about
        qa = Q.ask_spatial(random.Random(seed), SCENE, first=seed % 2 == 0)
        assert "blue" not in qa.question and qa.answer in (("left", "above") if seed % 2 == 0 else ("right", "below"))
        seen[qa.answer] += 1
    assert set(seen) == {"above", "below"}  # red circle and green triangle: one over the other
    assert Q.ask_spatial(random.Random(0), [SCENE[1], SCENE[3]]) is None  # both blue
    assert Q.ask_spatial(random.Random(0), SCENE[:1]) is None
    assert Q.ask_spatial(random.Random(0), [SCENE[0], SCENE[1]], first=False).answer == "right"


def test_ask_mc_letters_point_at_the_right_option():
    for seed in range(100):
        qa = Q.ask_mc(random.Random(seed), SCENE)
        assert len(qa.options) == 4 == len(set(qa.options)) and qa.answer in Q.LETTERS
        assert qa.question.split("\n")[1:5] == [f"{L}. {o}" for L, o in zip(Q.LETTERS, qa.options)]
        assert qa.question.endswith("\n" + Q.LETTER) and qa.family == "mc" and qa.sentence is None
        chosen = qa.options[Q.LETTERS.index(qa.answer)]
        if qa.category == "shape":  # colour-unique objects: red circle, green triangle
            assert sorted(qa.options) == sorted(SHAPES)
            color = qa.question.split("What shape is the ", 1)[1].split(" object?")[0]
            assert (color, chosen) in {("red", "circle"), ("green", "triangle")}
        else:
            shape = qa.question.split("What color is the ", 1)[1].split("?")[0]
            assert set(qa.options) <= set(COLORS)
            assert (shape, chosen) in {("circle", "red"), ("square", "blue"), ("triangle", "green"), ("cross", "blue")}
    assert Q.ask_mc(random.Random(0), SCENE, "shape", target="cross") is None  # the cross's colour is not unique
    assert Q.ask_mc(random.Random(0), SCENE, "color", target="purple") is None
    qa = Q.ask_mc(random.Random(0), SCENE, "color", target="green")
    assert qa.options[Q.LETTERS.index(qa.answer)] == "green" and "What color is the triangle?" in qa.question
    kinds = Counter(Q.ask_mc(random.Random(s), SCENE).category for s in range(200))
    assert set(kinds) == {"shape", "color"} and min(kinds.values()) > 60
    letters = Counter(Q.ask_mc(random.Random(s), SCENE).answer for s in range(400))
    assert set(letters) == set(Q.LETTERS) and min(letters.values()) > 60


def test_captions_and_digits():
    assert Q.caption_scene(SCENE[:1]) == "one object: a red circle at the top left."
    assert Q.caption_scene(SCENE) == ("four objects: a red circle at the top left, a green triangle at the bottom left, "
                                      "a blue square at the top right and a blue cross at the bottom right.")
    mid = [Shape("orange", "square", 22, 22, 20), Shape("purple", "cross", 2, 22, 18)]
    assert Q.caption_scene(mid) == "two objects: a purple cross at the left and an orange square in the center."
    assert Q.caption_scene(SCENE[:3]).startswith("three objects: ")
    assert Q.caption_digit(5, "orange") == "an orange handwritten digit 5."
    d = Q.ask_digit(7)
    assert (d.question, d.answer, d.family, d.category, d.sentence) == (
        f"What digit is written in the image?\n{Q.SHORT}", "7", "digit", "7", "The digit is 7.")
    c = Q.ask_digit_color("red")
    assert (c.question, c.answer, c.family, c.sentence) == (
        f"What color is the digit?\n{Q.SHORT}", "red", "digit_color", "The digit is red.")


def test_text_only_questions_have_right_answers_and_cover_their_range():
    kinds, sums = Counter(), set()
    for seed in range(600):
        qa = Q.text_only(random.Random(seed))
        kinds[qa.category] += 1
        assert qa.family == "text" and Q.family_of_question(qa.question) == "text"
        if qa.category == "corners":
            shape = qa.question.split("does a ", 1)[1].split(" have")[0]
            assert qa.answer == {"square": "4", "triangle": "3"}[shape] and qa.question.endswith(Q.SHORT)
            assert qa.sentence == f"A {shape} has {qa.answer} corners."
        elif qa.category == "is_color":
            word = qa.question.split("Is ", 1)[1].split(" a color?")[0]
            assert qa.answer == ("Yes" if word in COLORS else "No") and qa.question.endswith(Q.YESNO)
            assert qa.sentence == (f"Yes, {word} is a color." if word in COLORS else f"No, {word} is not a color.")
        else:
            a, b = map(int, qa.question.split("What is ", 1)[1].split("?")[0].split(" plus "))
            sums.add((a, b))
            assert qa.answer == str(a + b) and qa.sentence == f"{a} plus {b} is {a + b}."
    assert set(kinds) == {"corners", "is_color", "sum"} and min(kinds.values()) > 150
    assert sums == {(a, b) for a in range(1, 5) for b in range(0, 5)}


# --------------------------------------------------------------------------- reading questions back

READ_BACK = {
    f"<image>\nIs there a red circle in the image?\n{Q.SHORT}": "pope",
    f"Is there a red circle in the image?\n{Q.YESNO}": "pope",
    "Is there a red circle in the image? Please answer yes or no.": "pope",
    "Is there a red circle in the image?": "pope",
    f"How many objects are there in the image?\n{Q.SHORT}": "count",
    "How many objects are there in the image?": "count",
    f"What digit is written in the image?\n{Q.SHORT}": "digit",
    "What color is the digit?": "digit_color",
    f"<image>\nIs the red circle above or below the blue square?\n{Q.SHORT}": "spatial",
    "Is the red circle to the left or to the right of the blue square?": "spatial",
    f"What color is the circle?\n{Q.SHORT}": "color",
    f"What color is the circle?\nA. red\nB. blue\nC. green\nD. orange\n{Q.LETTER}": "mc",
    f"<image>\nWhat shape is the red object?\nA. circle\nB. cross\nC. square\nD. triangle\n{Q.LETTER}": "mc",
    "<image>\nDescribe the image briefly.": "caption",
    "List the objects in the image.": "caption",
    f"What is 2 plus 3?\n{Q.SHORT}": "text",
    f"Is red a color?\n{Q.YESNO}": "text",
    "Is there a way out?": "text",
    "Is the sky blue?": "text",
    "Is it above or below the line?": "text",  # a spatial middle, but not the template's start
}


@pytest.mark.parametrize("question,family", list(READ_BACK.items()))
def test_family_of_question(question, family):
    assert Q.family_of_question(question) == family


def test_stem_mc_options_and_kind():
    assert Q.stem(f"<image>\nIs there a red circle in the image?\n{Q.SHORT}") == "Is there a red circle in the image?"
    assert Q.stem("Is there a red circle in the image? Please answer yes or no.") == "Is there a red circle in the image?"
    assert Q.stem(f"Is red a color?\n{Q.YESNO}") == "Is red a color?"
    assert Q.stem("What is in the image?") == "What is in the image?"
    mc = f"What color is the circle?\nA. red\nB. light blue\nC. green\nD. orange\n{Q.LETTER}"
    assert Q.stem(mc) == "What color is the circle?\nA. red\nB. light blue\nC. green\nD. orange"
    assert Q.mc_options(mc) == {"A": "red", "B": "light blue", "C": "green", "D": "orange"}
    assert Q.mc_kind(mc) == "color" and Q.mc_kind("<image>\nWhat shape is the red object?\nA. circle") == "shape"


def test_restyle_thresholds_and_what_it_leaves_alone():
    pope = Q.QA(f"Is there a red circle in the image?\n{Q.SHORT}", "Yes", "pope", "random",
                sentence="Yes, there is a red circle in the image.")
    base = "Is there a red circle in the image?"
    for r, question, answer in ((0.0, f"{base}\n{Q.YESNO}", "Yes"), (0.3499, f"{base}\n{Q.YESNO}", "Yes"),
                                (0.35, f"{base}\n{Q.SHORT}", "Yes"), (0.6999, f"{base}\n{Q.SHORT}", "Yes"),
                                (0.70, f"{base} {Q.MME_YESNO}", "Yes"), (0.8499, f"{base} {Q.MME_YESNO}", "Yes"),
                                (0.85, base, pope.sentence), (0.9999, base, pope.sentence)):
        out = Q.restyle(FixedRng(r), pope)
        assert (out.question, out.answer, out.family, out.category) == (question, answer, "pope", "random"), r
    count = Q.ask_count(random.Random(0), SCENE)
    assert Q.restyle(FixedRng(0.1499), count).question == "How many objects are there in the image?"
    assert Q.restyle(FixedRng(0.1499), count).answer == "There are 4 objects in the image."
    assert (Q.restyle(FixedRng(0.15), count).question, Q.restyle(FixedRng(0.15), count).answer) == (count.question, "4")
    mc = Q.ask_mc(random.Random(0), SCENE)
    caption = Q.QA("Describe the image briefly.", "one object: ...", "caption", "scene")
    for r in (0.0, 0.5, 0.99):
        assert Q.restyle(FixedRng(r), mc) is mc and Q.restyle(FixedRng(r), caption) is caption


def test_chance_levels():
    """What the reports draw as each family's guessing line (uniform over the answers a family can have)."""
    assert Q.CHANCE == {"pope": 50.0, "mc": 25.0, "count": 25.0, "color": 100 / 6, "spatial": 50.0, "digit": 10.0}
    assert set(Q.CHANCE) == set(Q.FAMILIES) and Q.POPE_CATEGORIES == ("random", "popular", "adversarial")
