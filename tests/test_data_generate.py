"""The data generator: determinism, disjoint train/test, POPE balance, record format, CLI."""

from __future__ import annotations

import hashlib
import re
import json
from collections import Counter

import pytest

from dpvr.data import FAMILIES, POPE_CATEGORIES, generate_dataset, load_benchmark, verify_dataset
from dpvr.data.llava_format import IGNORE_INDEX, record_to_messages, tokenize_conversation
from dpvr.data.questions import LETTERS, family_of_question

N_TRAIN, N_TEST = 80, 24


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "d"
    manifest = generate_dataset(root, seed=3, num_train=N_TRAIN, num_test_per_family=N_TEST, progress=False)
    return root, manifest


def test_same_seed_gives_identical_files(data, tmp_path):
    root, manifest = data
    again = generate_dataset(tmp_path / "again", seed=3, num_train=N_TRAIN, num_test_per_family=N_TEST,
                             progress=False)
    assert again["files"] == manifest["files"]
    assert (tmp_path / "again" / "manifest.json").read_bytes() == (root / "manifest.json").read_bytes()


def test_different_seed_differs(data, tmp_path):
    _, manifest = data
    other = generate_dataset(tmp_path / "other", seed=4, num_train=N_TRAIN, num_test_per_family=N_TEST,
                             progress=False)
    assert other["files"]["train.json"] != manifest["files"]["train.json"]
    assert other["files"]["pope.jsonl"] != manifest["files"]["pope.jsonl"]


def test_manifest_hashes_every_file(data):
    root, manifest = data
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk
    verify_dataset(root)
    assert manifest["seed"] == 3 and manifest["generator_version"]


def test_test_images_unseen_in_training(data):
    root, manifest = data
    train = {h for rel, h in manifest["files"].items() if rel.startswith("images/train/")}
    test = {h for rel, h in manifest["files"].items() if rel.startswith("images/test/")}
    assert train and test and not train & test
    # content hash really is the file's hash
    rel = next(r for r in manifest["files"] if r.startswith("images/test/"))
    assert hashlib.sha256((root / rel).read_bytes()).hexdigest() == manifest["files"][rel]


def test_benchmark_records_have_the_fields(data):
    root, _ = data
    for fam in FAMILIES:
        recs = load_benchmark(root, fam)
        assert len(recs) == N_TEST
        for r in recs:
            assert {"id", "image", "question", "answer", "family", "category"} <= set(r)
            assert r["family"] == fam and (root / r["image"]).exists()
            assert "<image>" not in r["question"]
            if fam == "mc":
                assert len(r["options"]) == 4 and r["answer"] in "ABCD"
                assert r["question"].endswith("Answer with the option's letter from the given choices directly.")
            elif fam == "pope":  # lmms-eval's POPE task: the question + LLaVA-1.5's short-answer suffix
                assert r["answer"] in ("Yes", "No")
                assert r["question"].endswith("?\nAnswer the question using a single word or phrase.")
            elif fam == "spatial":  # GQA-style: both answers named in the question
                assert r["answer"] in ("left", "right", "above", "below") and r["answer"] in r["question"]
                assert r["question"].endswith("Answer the question using a single word or phrase.")
            else:
                assert r["question"].endswith("Answer the question using a single word or phrase.")


def test_pope_balanced_per_category(data):
    root, _ = data
    recs = load_benchmark(root, "pope")
    per = Counter((r["category"], r["answer"]) for r in recs)
    for cat in POPE_CATEGORIES:
        assert per[(cat, "Yes")] == per[(cat, "No")] == N_TEST // 6


def test_spatial_balanced_and_answerable_from_colour(data):
    root, _ = data
    recs = load_benchmark(root, "spatial")
    first = sum(r["answer"] in ("left", "above") for r in recs)
    assert first == len(recs) - first
    for r in recs:  # the two named objects have different colours
        a, b = re.findall(r"the (\w+) (?:circle|square|triangle|cross)", r["question"])
        assert a != b


def test_mc_and_color_answers_do_not_follow_object_frequencies():
    """Benchmark answers are drawn uniformly (objects are not): guessing the most frequent answer
    must not beat a uniform guess by much. 600 draws; generator version 4 failed this for MC."""
    import random

    from dpvr.data.questions import sample_color, sample_mc
    from dpvr.data.scenes import COLORS, SHAPES

    rng = random.Random(0)
    for kind, values in (("shape", SHAPES), ("color", list(COLORS))):
        answers = Counter(qa.options[LETTERS.index(qa.answer)] for _, qa in (sample_mc(rng, kind) for _ in range(600)))
        assert set(answers) == set(values)
        assert max(answers.values()) / 600 < 1.35 / len(values), (kind, answers)
    colors = Counter(qa.answer for _, qa in (sample_color(rng) for _ in range(600)))
    assert max(colors.values()) / 600 < 1.35 / len(COLORS), colors


def test_spatial_pair_records_match_the_benchmark_scenes(data):
    """Some training records are two-object scenes opening with a spatial question, as the
    benchmark's spatial items are."""
    root, manifest = data
    assert manifest["counts"]["train"].get("spatial_pair", 0) > 0
    caps = {c["image"]: c for c in map(json.loads, (root / "captions.jsonl").read_text().splitlines())}
    pairs = [r for r in json.loads((root / "train.json").read_text())
             if "image" in r and len(caps[r["image"]].get("objects", ())) == 2
             and family_of_question(r["conversations"][0]["value"].removeprefix("<image>\n")) == "spatial"]
    assert len(pairs) >= manifest["counts"]["train"]["spatial_pair"]


def test_train_json_llava_format_with_multi_turn_captions_and_text_only(data):
    root, manifest = data
    recs = json.loads((root / "train.json").read_text())
    assert len(recs) == N_TRAIN
    for r in recs:
        conv = r["conversations"]
        assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
        if "image" in r:
            assert conv[0]["value"].startswith("<image>\n") and (root / r["image"]).exists()
            assert all("<image>" not in t["value"] for t in conv[1:])
    kinds = manifest["counts"]["train"]
    assert kinds.get("multi_turn", 0) > 0 and kinds.get("caption", 0) > 0 and kinds.get("text", 0) > 0
    assert any(len(r["conversations"]) >= 6 for r in recs)
    assert any("image" not in r for r in recs)
    caps = [json.loads(x) for x in (root / "captions.jsonl").read_text().splitlines()]
    assert {c["image"] for c in caps if "twin_of" not in c} == {r["image"] for r in recs if "image" in r}
    assert any("twin_of" in c for c in caps)


def test_refuses_non_empty_out_and_bad_config(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("keep")
    with pytest.raises(FileExistsError, match="not empty"):
        generate_dataset(tmp_path / "x", num_train=5, num_test_per_family=6, progress=False)
    assert (tmp_path / "x" / "f").read_text() == "keep"
    with pytest.raises(ValueError, match="num_test_per_family"):
        generate_dataset(tmp_path / "y", num_train=5, num_test_per_family=2, progress=False)
    assert not (tmp_path / "y").exists()


def test_cli_generate(tmp_path, capsys):
    from dpvr.cli import main

    assert main(["data", "generate", "--out", str(tmp_path / "c"), "--seed", "1", "--num-train", "10",
                 "--num-test-per-family", "6", "--quiet"]) == 0
    assert (tmp_path / "c" / "manifest.json").exists()
    assert main(["data", "generate", "--out", str(tmp_path / "c"), "--num-train", "10", "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err



def test_tokenize_conversation_labels_only_answers(data):
    from dpvr.tiny.tokenizer import train_tokenizer, training_texts

    root, _ = data
    recs = json.loads((root / "train.json").read_text())
    tok = train_tokenizer(training_texts(recs))
    rec = next(r for r in recs if "image" in r and len(r["conversations"]) >= 4)
    ex = tokenize_conversation(rec, tok, num_image_tokens=64)
    ids, labels = ex["input_ids"], ex["labels"]
    image_id = tok.convert_tokens_to_ids("<image>")
    assert ids.count(image_id) == 64 and len(ids) == len(labels)
    assert all(lab == IGNORE_INDEX for i, lab in zip(ids, labels) if i == image_id)
    supervised = tok.decode([t for t in labels if t != IGNORE_INDEX])
    answers = [t["value"] for t in rec["conversations"][1::2]]
    assert supervised.replace(" ", "") == "".join(a + "</s>" for a in answers).replace(" ", "")
    assert labels.count(tok.eos_token_id) == len(answers)
    assert record_to_messages(rec)[0]["content"][0] == {"type": "image"}
    with pytest.raises(ValueError, match="unknown speaker"):
        record_to_messages({"id": "x", "conversations": [{"from": "bot", "value": "hi"}]})


def test_scene_questions_never_empty():
    """Every image record gets at least one question, however few questions the scene supports."""
    import random

    from dpvr.data.generate import _scene_questions
    from dpvr.data.scenes import sample_scene

    for i in range(400):
        rng = random.Random(i)
        assert _scene_questions(rng, sample_scene(rng, 1), 1)


def test_family_read_back_from_every_question(data):
    from dpvr.data.questions import family_of_question

    data, _ = data
    for fam in FAMILIES:
        assert {family_of_question(r["question"]) for r in load_benchmark(data, fam)} == {fam}
    seen = Counter(family_of_question(t["value"]) for r in json.loads((data / "train.json").read_text())
                   for t in r["conversations"][::2])
    assert set(FAMILIES) <= set(seen) <= set(FAMILIES) | {"digit_color", "caption", "text"}


def test_focus_records_are_single_questions_of_the_families(data):
    from dpvr.data.questions import family_of_question
    from dpvr.tiny.focus import focus_records, mc_text_records

    data, _ = data
    records = json.loads((data / "train.json").read_text())
    pope = focus_records(records, ("pope",))
    by_id = {r["id"]: r for r in records}
    n_pope = sum(family_of_question(t["value"]) == "pope" for r in records if "image" in r
                 for t in r["conversations"][::2])
    assert len(pope) == n_pope > 0
    for r in pope:
        human, gpt = r["conversations"]
        assert human["value"].startswith("<image>\n") and human["value"].count("<image>") == 1
        # a yes/no answer, or its sentence for a free-form question
        assert family_of_question(human["value"]) == "pope" and gpt["value"].split(",")[0] in ("Yes", "No")
        src = by_id[r["id"].rsplit("-", 1)[0]]
        assert r["image"] == src["image"] and gpt in src["conversations"]
    from dpvr.data.questions import mc_kind

    kinds = {k: focus_records(records, (f"mc/{k}",)) for k in ("color", "shape")}
    assert all(kinds.values())
    assert {mc_kind(r["conversations"][0]["value"]) for r in kinds["color"]} == {"color"}
    assert len(kinds["color"]) + len(kinds["shape"]) == len(focus_records(records, ("mc",)))
    text = mc_text_records(records)
    assert len(text) == len(focus_records(records, ("mc",))) > 0
    for r in text:
        assert "image" not in r and "<image>" not in r["conversations"][0]["value"]
        q, letter = r["conversations"][0]["value"], r["conversations"][1]["value"]
        named = q.split(". ", 1)[0].removeprefix("The answer is ")
        assert f"\n{letter}. {named}\n" in q
    assert len(focus_records(records, ("mc", "mc_text"))) == 2 * len(text)
    both = focus_records(records, ("pope", "conversations"))
    assert both[: len(records)] == records and both[len(records):] == pope
    with pytest.raises(ValueError, match="no training questions"):
        focus_records(records, ("nonexistent",))


def test_no_digit_bitmap_is_shared_between_train_and_test(tmp_path, monkeypatch):
    """The split is checked on the 8x8 bitmaps themselves (a re-coloured, moved copy of a training
    digit renders to other PNG bytes, so hashes of rendered images cannot see such a leak)."""
    import dpvr.data.generate as gen
    from dpvr.data.scenes import _digits, digit_split

    images, _ = _digits()
    train, test = digit_split("train"), digit_split("test")
    assert not set(train) & set(test) and sorted(train + test) == list(range(len(images)))
    assert not {images[i].tobytes() for i in train} & {images[i].tobytes() for i in test}

    used = {"train": [], "test": []}
    phase = ["train"]
    render, test_item = gen.render_digit, gen._test_item

    def spy_render(d, bg):
        used[phase[0]].append(d.index)
        return render(d, bg)

    def spy_test_item(*args, **kwargs):
        phase[0] = "test"
        return test_item(*args, **kwargs)

    monkeypatch.setattr(gen, "render_digit", spy_render)
    monkeypatch.setattr(gen, "_test_item", spy_test_item)
    generate_dataset(tmp_path / "d", seed=5, num_train=60, num_test_per_family=12, progress=False)
    assert used["train"] and used["test"]
    assert set(used["train"]) <= set(train) and set(used["test"]) <= set(test)
    train_bitmaps = {images[i].tobytes() for i in used["train"]}
    assert not any(images[i].tobytes() in train_bitmaps for i in used["test"])


def test_training_mixes_llava_dpvr_mme_and_free_form_wordings():
    """Generator 6: yes/no turns come in dpvr's, LLaVA-1.5's, MME's and free-form wording, short-answer turns
    with LLaVA's suffix or free-form (answered by a sentence); each is read back as its family, and the
    record's content (images, which questions) does not depend on the wording drawn."""
    from dpvr.data import questions as Q
    from dpvr.data.generate import DataConfig, _train_record
    from dpvr.data.scenes import digit_split

    pool = digit_split("train")
    ends = Counter()
    for i in range(600):
        rec, _, _, _ = _train_record(DataConfig(seed=1), i, pool)
        conv = rec["conversations"]
        for q, a in zip(conv[::2], conv[1::2]):
            fam, text, ans = Q.family_of_question(q["value"]), q["value"].replace("<image>\n", ""), a["value"]
            if fam in ("pope", "count", "color", "spatial", "digit", "digit_color"):
                stem = Q.stem(text)
                assert stem.endswith("?") and "\n" not in stem, text
            if fam == "pope":
                kind = ("dpvr" if text.endswith(Q.YESNO) else "llava" if text.endswith(Q.SHORT)
                        else "mme" if text.endswith(" " + Q.MME_YESNO) else "free")
                ends[kind] += 1
                assert (ans in ("Yes", "No")) == (kind != "free"), (text, ans)
                if kind == "free":
                    assert ans.startswith(("Yes, there is ", "No, there is no ")), ans
            elif fam == "count":
                ends["count free" if text == Q.stem(text) else "count short"] += 1
    n = sum(ends[k] for k in ("dpvr", "llava", "mme", "free"))
    assert n > 300
    for kind, share in (("dpvr", 0.35), ("llava", 0.35), ("mme", 0.15), ("free", 0.15)):
        assert abs(ends[kind] / n - share) < 0.07, (kind, ends)
    assert 0.05 < ends["count free"] / (ends["count free"] + ends["count short"]) < 0.3, ends


def test_reword_and_test_wording(tmp_path):
    from dpvr.data import generate_dataset
    from dpvr.data import questions as Q

    rec = {"question": "Is there a red circle in the image?\n" + Q.SHORT, "answer": "Yes"}
    assert Q.reword(rec, "dpvr")["question"] == "Is there a red circle in the image?\n" + Q.YESNO
    assert Q.reword(Q.reword(rec, "dpvr"), "llava") == rec
    other = {"question": "How many objects are there in the image?\n" + Q.SHORT, "answer": "2"}
    assert Q.reword(other, "dpvr") is other
    with pytest.raises(ValueError, match="unknown wording"):
        Q.reword(rec, "mme")
    generate_dataset(tmp_path / "d", seed=4, num_train=2, num_test_per_family=6, test_wording="dpvr", progress=False)
    generate_dataset(tmp_path / "l", seed=4, num_train=2, num_test_per_family=6, progress=False)
    for fam in FAMILIES:
        d, l = load_benchmark(tmp_path / "d", fam), load_benchmark(tmp_path / "l", fam)
        assert [Q.reword(r, "llava") for r in d] == l and [r["image"] for r in d] == [r["image"] for r in l]
        assert all(r["question"].endswith(Q.YESNO) for r in d) == (fam == "pope")
