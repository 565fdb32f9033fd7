"""Generated records checked against the scene they were drawn from, benchmark balance, config and manifest
checks, and LLaVA label masks of hand-made records (issue 20's mutation triage of ``dpvr.data``).

The oracle below answers every generated question again from the scene (or digit) the generator
returned with it, so a record whose answer does not match its image fails, whatever the wording.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter

import pytest

import dpvr.data.generate as gen
from dpvr.data import questions as Q
from dpvr.data.generate import DataConfig, _describe, _test_item, _train_record, _turns, _twin
from dpvr.data.llava_format import IGNORE_INDEX, record_to_messages, tokenize_conversation
from dpvr.data.scenes import COLORS, Digit, Shape, _digits, digit_split, object_name

SHAPE_RE = "circle|square|triangle|cross"


def _oracle(question: str, answer: str, content) -> None:
    """Assert that ``answer`` is right for ``question`` about ``content`` (scene, Digit or None)."""
    fam, base = Q.family_of_question(question), Q.stem(question).split("\n")[0]

    def short_or_sentence(short: str, sentence: str) -> None:
        assert answer in (short, sentence), (question, answer, short, sentence)
        if Q.stem(question) == question.replace("<image>\n", ""):  # free-form: no instruction, a sentence
            assert answer == sentence, (question, answer)
        else:
            assert answer == short, (question, answer)

    if fam == "text":
        assert content is None
        if m := re.fullmatch(r"How many corners does a (\w+) have\?", base):
            n = {"square": "4", "triangle": "3"}[m[1]]
            return short_or_sentence(n, f"A {m[1]} has {n} corners.")
        if m := re.fullmatch(r"Is (\w+) a color\?", base):
            yes = m[1] in COLORS
            return short_or_sentence("Yes" if yes else "No",
                                     f"Yes, {m[1]} is a color." if yes else f"No, {m[1]} is not a color.")
        a, b = map(int, re.fullmatch(r"What is (\d) plus (\d)\?", base).groups())
        return short_or_sentence(str(a + b), f"{a} plus {b} is {a + b}.")
    if isinstance(content, Digit):
        if fam == "digit":
            return short_or_sentence(str(content.label), f"The digit is {content.label}.")
        if fam == "digit_color":
            return short_or_sentence(content.color, f"The digit is {content.color}.")
        assert fam == "caption", question
        assert answer == Q.caption_digit(content.label, content.color)
        return None
    scene = content
    by_name = {object_name(s.obj): s for s in scene}
    if fam == "caption":
        assert answer == Q.caption_scene(scene)
    elif fam == "pope":
        article, name = re.fullmatch(r"Is there (an?) (\w+ \w+) in the image\?", base).groups()
        assert article == ("an" if name[0] in "aeiou" else "a")
        short_or_sentence("Yes" if name in by_name else "No",
                          f"Yes, there is {article} {name} in the image." if name in by_name
                          else f"No, there is no {name} in the image.")
    elif fam == "count":
        n = len(scene)
        short_or_sentence(str(n), "There is 1 object in the image." if n == 1 else f"There are {n} objects in the image.")
    elif fam == "color":
        shape = re.fullmatch(rf"What color is the ({SHAPE_RE})\?", base)[1]
        (s,) = [s for s in scene if s.shape == shape]
        short_or_sentence(s.color, f"The {shape} is {s.color}.")
    elif fam == "spatial":
        a, rel, b = re.fullmatch(r"Is the (\w+ \w+) (to the left or to the right of|above or below) the (\w+ \w+)\?",
                                 base).groups()
        sa, sb = by_name[a], by_name[b]
        assert sum(s.color == sa.color for s in scene) == sum(s.color == sb.color for s in scene) == 1
        if rel == "above or below":
            short = "above" if sa.cy < sb.cy else "below"
            assert abs(sa.cy - sb.cy) >= Q.MIN_GAP
        else:
            short = "left" if sa.cx < sb.cx else "right"
            assert abs(sa.cx - sb.cx) >= Q.MIN_GAP
        words = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}[short]
        short_or_sentence(short, f"The {a} is {words} the {b}.")
    elif fam == "mc":
        options = Q.mc_options(question)
        assert len(options) == 4 and question.endswith(Q.LETTER)
        if Q.mc_kind(question) == "shape":
            color = re.fullmatch(r"What shape is the (\w+) object\?", base)[1]
            (s,) = [s for s in scene if s.color == color]
            assert options[answer] == s.shape
        else:
            shape = re.fullmatch(rf"What color is the ({SHAPE_RE})\?", base)[1]
            (s,) = [s for s in scene if s.shape == shape]
            assert options[answer] == s.color
    else:  # pragma: no cover - a family the oracle does not know
        raise AssertionError(f"unexpected family {fam} for {question!r}")


def test_every_training_answer_matches_its_image():
    cfg = DataConfig(seed=2)
    pool = digit_split("train")
    kinds, turns, families, metas = Counter(), Counter(), Counter(), []
    for i in range(300):
        rec, img, kind, meta = _train_record(cfg, i, pool)
        metas.append(meta)
        kinds[kind] += 1
        conv = rec["conversations"]
        assert rec["id"] == f"train-{i:06d}" and [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
        turns[len(conv) // 2] += 1
        assert len(conv) // 2 <= cfg.max_turns
        if kind == "text":
            assert img is None and meta is None and (i + 1) % 50 == 0 and len(conv) in (2, 4)
            assert all("<image>" not in t["value"] for t in conv)
        else:
            assert (i + 1) % 50 != 0 and img.size == (64, 64)
            assert conv[0]["value"].startswith("<image>\n") and all("<image>" not in t["value"] for t in conv[1:])
            assert len({t["value"] for t in conv[::2]}) == len(conv) // 2  # no question asked twice
        content = meta[0] if meta else None
        if kind == "spatial_pair":
            assert len(content) == 2 and Q.family_of_question(conv[0]["value"]) == "spatial"
        if kind == "digit":
            assert {Q.family_of_question(t["value"]) for t in conv[::2]} <= {"digit", "digit_color"}
        if kind == "caption":
            assert Q.family_of_question(conv[0]["value"]) == "caption"
        if kind == "single_turn":
            assert len(conv) == 2
        for q, a in zip(conv[::2], conv[1::2]):
            families[Q.family_of_question(q["value"])] += 1
            _oracle(q["value"].removeprefix("<image>\n"), a["value"], content)
    assert kinds["text"] == 6  # records 49, 99, ..., 299
    # the config's fractions, roughly (300 records): digits 35 %, spatial pairs 45 % of the scenes
    n_digit = sum(isinstance(meta[0], Digit) for meta in metas if meta)
    assert 0.27 < n_digit / 300 < 0.43 and 0.3 < kinds["spatial_pair"] / (300 - n_digit - kinds["text"]) < 0.6
    assert kinds["caption"] > 10 and kinds["multi_turn"] > 30 and kinds["single_turn"] > 5
    assert 0.15 < turns[1] / 300 < 0.4 and max(turns) == cfg.max_turns
    assert set(families) == set(Q.FAMILIES) | {"digit_color", "caption", "text"}


def test_record_content_does_not_depend_on_the_wording_drawn(monkeypatch):
    """The wording comes from its own random stream: with every question left in its plain wording the
    record shows the same image and asks the same questions (only the instructions and sentences differ)."""
    pool = digit_split("train")
    styled = [_train_record(DataConfig(seed=0), i, pool) for i in range(150)]
    monkeypatch.setattr(Q, "restyle", lambda rng, qa: qa)
    plain = [_train_record(DataConfig(seed=0), i, pool) for i in range(150)]
    restyled = Counter()
    for (srec, simg, skind, smeta), (prec, pimg, pkind, pmeta) in zip(styled, plain):
        assert (skind, smeta) == (pkind, pmeta) and (simg is None or simg.tobytes() == pimg.tobytes())
        sconv, pconv = srec["conversations"], prec["conversations"]
        assert [Q.stem(t["value"]) for t in sconv[::2]] == [Q.stem(t["value"]) for t in pconv[::2]]
        restyled[skind] += sum(s["value"] != p["value"] for s, p in zip(sconv, pconv))
    # every kind of record gets the training wordings (captions only through their follow-up questions)
    assert all(restyled[k] > 0 for k in ("multi_turn", "single_turn", "spatial_pair", "digit", "caption", "text"))
    rec1 = plain[1][0]["conversations"]  # seed 0, record 1, hand-checked against its scene in _oracle's terms
    assert [Q.stem(t["value"]) for t in rec1[::2]] == [
        "Is there a red cross in the image?", "Is there a blue cross in the image?", "What color is the cross?",
        "Is there a yellow circle in the image?", "Is there a blue triangle in the image?"]
    assert [t["value"] for t in rec1[1::2]] == ["Yes", "No", "red", "No", "No"]


def test_no_text_only_records_when_the_fraction_is_zero():
    cfg = DataConfig(seed=1, text_only_fraction=0.0, digit_fraction=0.0, caption_fraction=0.0,
                     multi_turn_fraction=0.0, spatial_pair_fraction=0.0)
    kinds = Counter(_train_record(cfg, i, digit_split("train"))[2] for i in range(120))
    assert kinds == {"single_turn": 120}
    cfg = DataConfig(seed=1, text_only_fraction=0.0, digit_fraction=1.0, caption_fraction=0.0, multi_turn_fraction=1.0)
    recs = [_train_record(cfg, i, digit_split("train")) for i in range(30)]
    assert {k for _, _, k, _ in recs} == {"digit"} and all(len(r["conversations"]) == 4 for r, _, _, _ in recs)


def test_benchmark_items_are_balanced_and_right(monkeypatch):
    """Each family's item j: the answer the balance scheme assigns to j, and right for the drawn scene."""
    cfg = DataConfig(seed=5, num_test_per_family=24)
    pool = digit_split("test")
    drawn = []
    render = gen.render_scene
    monkeypatch.setattr(gen, "render_scene", lambda scene, bg: drawn.append(scene) or render(scene, bg))
    for fam in Q.FAMILIES:
        for j in range(24):
            img, qa = _test_item(cfg, fam, j, pool, attempt=0)
            assert qa.family == fam and img.size == (64, 64)
            rec = Q.reword({"question": qa.question, "answer": qa.answer}, "llava")
            if fam == "digit":
                assert qa.answer == str(int(_digits()[1][pool[j]]))  # pool[j % len(pool)] while n <= len(pool)
                continue
            _oracle(rec["question"], qa.answer, drawn[-1])
            if fam == "pope":
                assert (qa.category, qa.answer) == (Q.POPE_CATEGORIES[j % 3], "Yes" if (j // 3) % 2 == 0 else "No")
            elif fam == "count":
                assert qa.answer == str(1 + j % 4)
            elif fam == "spatial":
                assert len(drawn[-1]) == 2 and (qa.answer in ("left", "above")) == (j % 2 == 0)
            elif fam == "mc":
                assert qa.category == ("shape", "color")[j % 2]
    # a retry (attempt 1, after an image seen in training) draws another image
    assert _test_item(cfg, "count", 0, pool, 1)[0].tobytes() != _test_item(cfg, "count", 0, pool, 0)[0].tobytes()
    with pytest.raises(ValueError, match="unknown family 'ocr'"):
        _test_item(cfg, "ocr", 0, pool, 0)
    big = DataConfig(seed=5, num_test_per_family=len(pool) + 1)  # more items than bitmaps: drawn at random
    assert len({_test_item(big, "digit", 0, pool, a)[1].answer for a in range(30)}) > 3  # not always pool[0]


def test_turns_put_the_image_in_the_first_turn_only():
    qas = [Q.ask_digit(3), Q.ask_digit_color("red")]
    assert _turns(qas, True) == [
        {"from": "human", "value": f"<image>\nWhat digit is written in the image?\n{Q.SHORT}"},
        {"from": "gpt", "value": "3"},
        {"from": "human", "value": f"What color is the digit?\n{Q.SHORT}"}, {"from": "gpt", "value": "red"}]
    assert _turns(qas, False)[0]["value"] == f"What digit is written in the image?\n{Q.SHORT}"


def test_scene_questions_are_distinct_and_k_of_them():
    scene = [Shape("red", "circle", 2, 2, 20), Shape("blue", "square", 42, 42, 20), Shape("green", "cross", 2, 42, 20)]
    for seed in range(30):
        qas = gen._scene_questions(random.Random(seed), scene, 5)
        assert len(qas) == 5 == len({q.question for q in qas})
        for qa in qas:
            _oracle(qa.question, qa.answer, scene)
    fams = Counter(qa.family for s in range(200) for qa in gen._scene_questions(random.Random(s), scene, 1))
    with pytest.MonkeyPatch.context() as mp:  # no asker has a question: the count question, never an empty turn list
        mp.setattr(gen, "_SCENE_ASKERS", (lambda rng, sc: None,))
        mp.setattr(gen, "_ASKER_WEIGHTS", (1.0,))
        (qa,) = gen._scene_questions(random.Random(0), scene, 3)
        assert (qa.family, qa.answer) == ("count", "3")
    # weights 2.5 : 0.6 : 1.0 : 2.0 : 1.5 over pope, count, color, spatial, mc
    assert fams["pope"] > fams["spatial"] > fams["mc"] > fams["color"] > fams["count"] > 0


def test_describe_and_twins():
    scene = [Shape("red", "circle", 2, 3, 20)]
    assert _describe(scene, (1, 2, 3)) == {
        "caption": "one object: a red circle at the top left.", "background": [1, 2, 3],
        "objects": [{"color": "red", "shape": "circle", "x": 2, "y": 3, "size": 20}]}
    d = Digit(index=11, label=1, color="orange", x=4, y=5, size=48)
    assert _describe(d, (9, 9, 9)) == {
        "caption": "an orange handwritten digit 1.", "background": [9, 9, 9],
        "digit": {"label": 1, "color": "orange", "x": 4, "y": 5, "size": 48, "source": 11}}
    pool = digit_split("train")
    got = [_twin(DataConfig(), i, scene, (1, 2, 3), pool)[0] for i in range(200)]
    assert 70 < sum(t is not None for t in got) < 130  # twin_fraction 0.5
    assert all(_twin(DataConfig(twin_fraction=0.0), i, scene, (1, 2, 3), pool) == (None, None) for i in range(20))
    twin, img = _twin(DataConfig(twin_fraction=1.0), 0, scene, (1, 2, 3), pool)
    assert twin[0].shape != "circle" and img.getpixel((12, 13)) == COLORS[twin[0].color]


@pytest.mark.parametrize("kw,msg", [
    ({"num_train": 0}, "num_train must be >= 1, got 0"),
    ({"num_test_per_family": 5}, "num_test_per_family must be >= 6"),
    ({"max_turns": 1}, "max_turns must be >= 2, got 1"),
    ({"text_only_fraction": 0.5, "digit_fraction": 0.51}, "text_only_fraction \\+ digit_fraction must be <= 1"),
    ({"test_wording": "mme"}, "test_wording must be one of llava, dpvr, got 'mme'"),
    *[({name: v}, f"{name} must be in \\[0, 1\\], got {v}")
      for name in ("text_only_fraction", "digit_fraction", "caption_fraction", "multi_turn_fraction",
                   "twin_fraction", "spatial_pair_fraction") for v in (-0.01, 1.01)],
])
def test_data_config_refuses(kw, msg):
    with pytest.raises(ValueError, match=msg):
        DataConfig(**kw)


def test_data_config_accepts_the_edges():
    DataConfig(num_train=1, num_test_per_family=6, max_turns=2, text_only_fraction=0.0, digit_fraction=1.0,
               caption_fraction=1.0, multi_turn_fraction=0.0, twin_fraction=1.0, spatial_pair_fraction=0.0,
               test_wording="dpvr")
    DataConfig(text_only_fraction=1.0, digit_fraction=0.0)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("small") / "d"
    return root, gen.generate_dataset(root, seed=7, num_train=12, num_test_per_family=6, progress=False)


def test_manifest_counts_and_config(small):
    root, m = small
    assert m["generator"] == "dpvr.data.generate" and m["generator_version"] == gen.GENERATOR_VERSION == "6"
    assert m["config"] == {**DataConfig(seed=7, num_train=12, num_test_per_family=6).__dict__}
    assert m["counts"]["test"] == {f: 6 for f in Q.FAMILIES} and m["counts"]["train_total"] == 12
    train = m["counts"]["train"]
    captions = (root / "captions.jsonl").read_text().splitlines()
    assert train["caption_pairs"] == len(captions) and sum(v for k, v in train.items() if k != "caption_pairs") == 12
    assert json.loads((root / "manifest.json").read_text()) == m
    assert (root / "train.json").read_text().startswith("[\n{") and (root / "train.json").read_text().endswith("}\n]\n")
    for fam in Q.FAMILIES:
        lines = (root / f"{fam}.jsonl").read_text().split("\n")
        assert len(lines) == 7 and lines[-1] == ""
        recs = [json.loads(x) for x in lines[:-1]]
        assert [r["id"] for r in recs] == [f"{fam}-{j:06d}" for j in range(6)]
        assert [r["image"] for r in recs] == [f"images/test/{fam}/{j:06d}.png" for j in range(6)]
        assert all(("options" in r) == (fam == "mc") for r in recs)
    # captions.jsonl describes each training image with what is drawn in it
    for c in map(json.loads, captions):
        assert c["image"].startswith("images/train/") and (root / c["image"]).exists()
        assert ("twin_of" in c) == c["image"].endswith("_twin.png")


#: sha256 of the JSON files of ``generate_dataset(seed=7, num_train=12, num_test_per_family=6)``. The shipped
#: checkpoint's build.json records the manifest of its benchmark, so any change to what a seed draws must come
#: with a new GENERATOR_VERSION (and a rebuilt checkpoint); then update this digest.
GOLDEN = {"6": "6aecdd867821af28d544fb9bbf6d707e0ea17181f86622ebf273d8da1f2c6f36"}


def test_what_a_seed_draws_is_pinned_per_generator_version(small):
    import hashlib

    root, m = small
    digest = hashlib.sha256()
    for name in ["train.json", "captions.jsonl"] + [f"{f}.jsonl" for f in Q.FAMILIES]:
        digest.update(name.encode() + b"\0" + (root / name).read_bytes())
    assert GOLDEN.get(m["generator_version"]) == digest.hexdigest(), (
        f"generator version {m['generator_version']} draws other data than pinned ({digest.hexdigest()}): "
        "bump GENERATOR_VERSION if the change is meant, and pin the new digest")


def test_verify_dataset_notices_edits_and_missing_files(small, tmp_path):
    import shutil

    root, m = small
    copy = tmp_path / "c"
    shutil.copytree(root, copy)
    assert gen.verify_dataset(copy) == m
    (copy / "pope.jsonl").write_text((copy / "pope.jsonl").read_text().replace("Yes", "No"))
    with pytest.raises(ValueError, match=r"1 file\(s\) in .* do not match manifest.json \(e.g. pope.jsonl\)"):
        gen.verify_dataset(copy)
    shutil.copy(root / "pope.jsonl", copy / "pope.jsonl")
    (copy / "images/test/mc/000003.png").unlink()
    with pytest.raises(ValueError, match="images/test/mc/000003.png"):
        gen.verify_dataset(copy, prefixes=("images/test/",))
    with pytest.raises(FileNotFoundError, match="not a dataset written by `dpvr data generate`"):
        gen.verify_dataset(tmp_path)


def test_verify_dataset_prefixes_limit_the_check(small, tmp_path):
    import shutil

    root, _ = small
    copy = tmp_path / "c"
    shutil.copytree(root, copy)
    (copy / "images/train/000000.png").unlink()
    gen.verify_dataset(copy, prefixes=("images/test/",) + tuple(f"{f}.jsonl" for f in Q.FAMILIES))


def test_load_benchmark(small, tmp_path):
    root, _ = small
    recs = gen.load_benchmark(root, "count")
    assert [r["answer"] for r in recs] == ["1", "2", "3", "4", "1", "2"]
    (tmp_path / "pope.jsonl").write_text('{"a": 1}\n\n  \n{"a": 2}\n')
    assert gen.load_benchmark(tmp_path, "pope") == [{"a": 1}, {"a": 2}]
    with pytest.raises(FileNotFoundError, match="count.jsonl not found; families are pope, mc, count"):
        gen.load_benchmark(tmp_path, "count")


def test_overwrite_replaces_and_refusal_keeps(small, tmp_path):
    out = tmp_path / "o"
    gen.generate_dataset(out, seed=1, num_train=3, num_test_per_family=6, progress=False)
    first = json.loads((out / "manifest.json").read_text())
    m = gen.generate_dataset(out, seed=2, num_train=4, num_test_per_family=6, overwrite=True, progress=False)
    assert m["seed"] == 2 and json.loads((out / "manifest.json").read_text()) == m != first
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"manifest.json"}
    assert on_disk == set(m["files"])  # nothing of the first dataset is left
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o.tmp")]


# --------------------------------------------------------------------------- llava_format

def test_record_to_messages():
    rec = {"id": "r", "conversations": [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "<image>\n<image>\nCompare them.\n"},
        {"from": "gpt", "value": "The <image> is red."},
        {"from": "user", "value": "And <image>?"},
        {"from": "assistant"}]}
    assert record_to_messages(rec) == [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Compare them."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "The <image> is red."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "And ?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": ""}]}]
    assert record_to_messages({"conversations": [{"from": "human", "value": "<img> hi"}]}, "<img>")[0]["content"] == [
        {"type": "image"}, {"type": "text", "text": " hi"}]
    for bad in ({"id": "x"}, {"id": "x", "conversations": []}, {"id": "x", "conversations": "hi"}):
        with pytest.raises(ValueError, match="record 'x' has no 'conversations' list"):
            record_to_messages(bad)
    with pytest.raises(ValueError, match=r"record '\?': unknown speaker 'bot' \(expected one of \['assistant'"):
        record_to_messages({"conversations": [{"from": "bot", "value": "hi"}]})


@pytest.fixture(scope="module")
def tok():
    from dpvr.tiny.tokenizer import train_tokenizer

    return train_tokenizer(["USER: What color is the circle? ASSISTANT: red", "How many shapes? 2 Be brief."] * 20,
                           vocab_size=300)


TWO_TURNS = {"id": "m", "conversations": [
    {"from": "human", "value": "<image>\nWhat color is the circle?"}, {"from": "gpt", "value": "red"},
    {"from": "human", "value": "How many shapes?"}, {"from": "gpt", "value": "2"}]}


def _text(tok, ids):
    return tok.decode(ids).replace(" ", "")


def test_tokenize_conversation_labels_exactly_the_answers(tok):
    ex = tokenize_conversation(TWO_TURNS, tok, num_image_tokens=5)
    ids, labels = ex["input_ids"], ex["labels"]
    image_id, eos = tok.convert_tokens_to_ids("<image>"), tok.eos_token_id
    assert len(ids) == len(labels) and ids.count(image_id) == 5
    start = ids.index(image_id)
    assert ids[start:start + 5] == [image_id] * 5 and labels[start:start + 5] == [IGNORE_INDEX] * 5
    assert all(lab in (IGNORE_INDEX, i) for i, lab in zip(ids, labels))
    runs, cur = [], []  # maximal runs of supervised tokens
    for i, lab in zip(ids, labels):
        if lab != IGNORE_INDEX:
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    runs += [cur] if cur else []
    assert [_text(tok, r) for r in runs] == ["red</s>", "2</s>"] and labels[-1] == eos
    assert _text(tok, ids).startswith("USER:<image><image><image><image><image>\nWhatcoloristhecircle?ASSISTANT:red</s>")
    one = tokenize_conversation(TWO_TURNS, tok, num_image_tokens=1)
    assert len(ids) - len(one["input_ids"]) == 4


def test_tokenize_conversation_cuts_at_the_last_complete_answer(tok):
    full = tokenize_conversation(TWO_TURNS, tok, num_image_tokens=5)
    n, first_end = len(full["input_ids"]), full["labels"].index(tok.eos_token_id) + 1
    assert tokenize_conversation(TWO_TURNS, tok, num_image_tokens=5, max_length=n) == full
    for cut in (n - 1, first_end):
        ex = tokenize_conversation(TWO_TURNS, tok, num_image_tokens=5, max_length=cut)
        assert ex == {"input_ids": full["input_ids"][:first_end], "labels": full["labels"][:first_end]}
    with pytest.raises(ValueError, match=r"record 'm': no complete assistant turn within max_length=" + str(first_end - 1)):
        tokenize_conversation(TWO_TURNS, tok, num_image_tokens=5, max_length=first_end - 1)
    with pytest.raises(ValueError, match=r"record '\?': no complete assistant turn within max_length=3"):
        tokenize_conversation({"conversations": TWO_TURNS["conversations"]}, tok, num_image_tokens=5, max_length=3)


def test_tokenize_conversation_refuses_what_it_cannot_label(tok):
    with pytest.raises(ValueError, match="record 'q': no assistant tokens"):
        tokenize_conversation({"id": "q", "conversations": [{"from": "human", "value": "hi"}]}, tok, 4)
    sneaky = {"id": "s", "conversations": [{"from": "system", "value": "<image>"},
                                            {"from": "human", "value": "hi"}, {"from": "gpt", "value": "red"}]}
    with pytest.raises(ValueError, match=r"record 's': 0 image placeholder\(s\) but 1 image tokens after templating"):
        tokenize_conversation(sneaky, tok, 4)
