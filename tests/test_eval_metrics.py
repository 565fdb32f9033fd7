"""Metrics: POPE figures on a hand-made case, option-letter parsing, circular evaluation, exact match."""

from __future__ import annotations

import pytest

from dpvr.evaluation.metrics import (
    normalize_text,
    parse_choice,
    parse_yes_no,
    pope_metrics,
    rotate_choices,
    score,
    summarize,
    summarize_family,
)

OPTIONS = ["circle", "square", "triangle", "star"]


def _mc_record(answer="B", rid="q1", category="shape"):
    question = "What shape is the red object?\nA. circle\nB. square\nC. triangle\nD. star\n" \
               "Answer with the option's letter from the given choices directly."
    return {"id": rid, "question": question, "answer": answer, "options": list(OPTIONS), "category": category}


def test_pope_figures_by_hand():
    # gold:  Y Y Y Y N N N N ; predictions: Y Y Y N Y N N (unparsed)
    gold = ["yes"] * 4 + ["no"] * 4
    pred = ["yes", "yes", "yes", "no", "yes", "no", "no", None]
    m = pope_metrics(list(zip(pred, gold)))
    # TP=3 FP=1 FN=1 TN=2, one unparsed (wrong, not a yes)
    assert m["accuracy"] == 62.5
    assert m["precision"] == 75.0 and m["recall"] == 75.0 and m["f1"] == 75.0
    assert m["yes_ratio"] == 50.0
    assert m["n"] == 8 and m["unparsed"] == 1


def test_pope_f1_is_the_harmonic_mean_of_different_precision_and_recall():
    # gold:  Y Y Y Y N N N N ; predictions: Y Y N N Y N N N -> TP=2 FN=2 FP=1 TN=3: P=2/3, R=1/2, F1=4/7
    gold = ["yes"] * 4 + ["no"] * 4
    pred = ["yes", "yes", "no", "no", "yes", "no", "no", "no"]
    assert pope_metrics(list(zip(pred, gold))) == {
        "accuracy": 62.5, "precision": 66.67, "recall": 50.0, "f1": 57.14, "yes_ratio": 37.5, "n": 8, "unparsed": 0}


def test_pope_per_category_and_overall():
    rows = []
    for cat, preds in [("random", ["Yes", "No"]), ("popular", ["Yes", "Yes"]), ("adversarial", ["No", "no."])]:
        for gold, p in zip(["Yes", "No"], preds):
            rec = {"id": f"{cat}-{gold}", "question": "Is there a star?", "answer": gold, "category": cat}
            rows.append({**rec, **score(rec, p)})
    fam = summarize_family(rows)
    assert fam["kind"] == "yesno"
    assert fam["categories"]["random"]["accuracy"] == 100.0
    assert fam["categories"]["popular"] == {**fam["categories"]["popular"], "accuracy": 50.0, "precision": 50.0,
                                            "recall": 100.0, "f1": 66.67, "yes_ratio": 100.0}
    assert fam["categories"]["adversarial"]["f1"] == 0.0  # never says yes: no true positive
    assert fam["accuracy"] == pytest.approx(100 * 4 / 6, abs=0.01)
    assert fam["n"] == 6


@pytest.mark.parametrize("text,expected", [
    ("Yes", "yes"), ("no", "no"), ("Yes, there is a red star.", "yes"), ("NO.", "no"),
    ("There is no star.", "no"), ("I do not see one", "no"), ("yes yes", "yes"), ("maybe", None), ("", None),
    ("Yes, but not the red one.", "yes"),  # the first word decides over a later negation
    ("I would say yes.", "yes"),
])
def test_yes_no_parsing(text, expected):
    assert parse_yes_no(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("B", "B"), ("b", "B"), ("B.", "B"), ("(B)", "B"), ("(B) square", "B"), ("B) square", "B"), ("B: square", "B"),
    ("B. square", "B"), ("B square", "B"), ("square", "B"), ("Square.", "B"), ("The answer is B.", "B"),
    ("Answer: (C)", "C"), ("It is a triangle.", "C"), ("A", "A"), ("a circle", "A"), (" D ", "D"),
    ("E", None), ("hexagon", None), ("circle or square", None), ("", None),
    # a bare letter followed by another option's text contradicts itself: no option is picked
    ("B circle", None), ("C circle?", None), ("D square", None),
    ("A square", "B"),  # "a square": the article, not the letter A
    ("B. I am not sure", "B"), ("(C) maybe", "C"),  # a letter that opens the answer, whatever follows
    ("E. none of these", None),  # a letter that is not an option
    ("B it is the square", "B"),  # letter and the option's text agree
])
def test_option_letter_parsing(text, expected):
    assert parse_choice(text, OPTIONS) == expected


def test_circular_rotation_moves_options_and_answer():
    rec = _mc_record("B")
    rotated = [rotate_choices(rec, k) for k in range(4)]
    assert [r["answer"] for r in rotated] == ["B", "A", "D", "C"]
    assert rotated[1]["options"] == ["square", "triangle", "star", "circle"]
    assert "A. square\nB. triangle\nC. star\nD. circle" in rotated[1]["question"]
    assert all(r["id"] == "q1" for r in rotated) and [r["rotation"] for r in rotated] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="list its options"):
        rotate_choices({**rec, "question": "What shape?"}, 1)


def test_circular_accuracy_needs_every_rotation():
    rows = []
    # q1 always answered with the square's letter: correct in every rotation; q2 always "A": right once.
    for rid in ("q1", "q2"):
        for k in range(4):
            r = rotate_choices(_mc_record("B", rid), k)
            pred = "square" if rid == "q1" else "A"
            rows.append({**r, **score(r, pred)})
    fam = summarize_family(rows)
    assert fam["n"] == 2
    assert fam["accuracy"] == 50.0
    assert fam["accuracy_first_pass"] == 50.0  # rotation 0: q1 right, q2 wrong (gold B)


def test_exact_match_normalization():
    assert normalize_text("The Red.") == "red"
    assert normalize_text("Two") == "2"
    assert normalize_text(" light-blue ") == "light blue"
    rec = {"id": "c", "question": "How many?", "answer": "3", "category": "objects"}
    assert score(rec, "three")["correct"] and score(rec, "3.")["correct"]
    assert not score(rec, "4")["correct"] and not score(rec, "33")["correct"]
    assert score({**rec, "answer": "red"}, "Red")["kind"] == "short"


def test_overall_summary_macro_and_micro():
    fams = {"a": {"accuracy": 100.0, "n": 1}, "b": {"accuracy": 0.0, "n": 3}}
    assert summarize(fams) == {"accuracy": 50.0, "accuracy_micro": 25.0, "n": 4, "families": 2}
    with pytest.raises(ValueError):
        summarize({})


# --------------------------------------------------------------------------- mutation-testing survivors (issue 20)

def test_pope_without_any_yes_has_zero_precision_and_recall():
    """No gold yes and no predicted yes: precision, recall and F1 are 0 (not 1): nothing was found."""
    assert pope_metrics([("no", "no"), (None, "no")]) == {
        "accuracy": 50.0, "precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 0.0, "n": 2, "unparsed": 1}
    only_false_alarms = pope_metrics([("yes", "no")])
    assert only_false_alarms["precision"] == 0.0 and only_false_alarms["recall"] == 0.0


def test_family_summary_of_multiple_choice_and_short_answers_exactly():
    mc = [{**r, **score(r, p)} for r, p in [(_mc_record("B", "q1"), "B"), (_mc_record("C", "q2"), "zzz"),
                                            (_mc_record("A", "q3", category="colour"), "A")]]
    assert summarize_family(mc) == {
        "kind": "mc", "accuracy": 66.67, "n": 3, "unparsed": 1,
        "categories": {"colour": {"accuracy": 100.0, "n": 1, "unparsed": 0},
                       "shape": {"accuracy": 50.0, "n": 2, "unparsed": 1}}}
    short = [{**r, **score(r, p)} for r, p in [({"id": "c1", "question": "How many?", "answer": "3"}, "three"),
                                               ({"id": "c2", "question": "How many?", "answer": "4"}, "5")]]
    assert summarize_family(short) == {"kind": "short", "accuracy": 50.0, "n": 2}  # no category: no breakdown
    one_category = [{**r, "category": "count"} for r in short]
    assert summarize_family(one_category)["categories"] == {"count": {"accuracy": 50.0, "n": 2}}
    partly = [short[0], one_category[1]]  # a record without a category next to one with
    assert set(summarize_family(partly)["categories"]) == {"", "count"}
    mixed = summarize_family(short + mc[:1])
    assert mixed["kind"] == "mixed" and mixed["n"] == 3 and "unparsed" not in mixed
    with pytest.raises(ValueError, match="^no predictions to summarise$"):
        summarize_family([])


def test_overall_summary_rounds_to_two_decimals_and_handles_empty_families():
    fams = {"a": {"accuracy": 10.0, "n": 3}, "b": {"accuracy": 20.0, "n": 1}, "c": {"accuracy": 25.0, "n": 2}}
    assert summarize(fams) == {"accuracy": 18.33, "accuracy_micro": 16.67, "n": 6, "families": 3}
    assert summarize({"a": {"accuracy": 0.0, "n": 0}}) == {"accuracy": 0.0, "accuracy_micro": 0.0, "n": 0, "families": 1}
    with pytest.raises(ValueError, match="^no families to summarise$"):
        summarize({})


def test_option_text_matching_with_overlapping_or_repeated_options_and_the_letter_limit():
    assert parse_choice("dark red", ["red", "dark red", "blue", "green"]) == "B"  # the whole text, not a part
    assert parse_choice("red", ["red", "red", "blue", "green"]) is None  # two options say it: none is picked
    letters = [f"option {i}" for i in range(26)]
    assert parse_choice("Z", letters) == "Z"
    with pytest.raises(ValueError, match="^at most 26 options are supported, got 27$"):
        parse_choice("A", letters + ["one more"])


def test_rotation_refusals_name_the_record_and_the_answer():
    with pytest.raises(ValueError, match=r"record 'q7': circular evaluation needs"):
        rotate_choices({**_mc_record("B", "q7"), "question": "What shape?"}, 1)
    with pytest.raises(ValueError, match=r"record 'q7': answer 'E' is not an option letter ABCD"):
        rotate_choices(_mc_record("E", "q7"), 1)


def test_circular_summary_exactly_per_category_too():
    rows = []
    for rid, pred in (("q1", "square"), ("q2", "A"), ("q3", "nothing")):
        for k in range(4):
            r = rotate_choices(_mc_record("B", rid), k)
            rows.append({**r, **score(r, pred)})
    expected = {"accuracy": 33.33, "n": 3, "accuracy_first_pass": 33.33, "unparsed": 4}
    assert summarize_family(rows) == {"kind": "mc", **expected, "categories": {"shape": expected}}


def test_yes_no_scoring_parses_the_answer_and_empty_pope_is_zero():
    rec = {"id": "p", "question": "Is there a star?", "answer": "Yes"}
    assert score(rec, "Yes, there is a star.") == {"kind": "yesno", "parsed": "yes", "correct": True}
    assert score({**rec, "answer": "no"}, "There is no star.") == {"kind": "yesno", "parsed": "no", "correct": True}
    assert pope_metrics([]) == {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 0.0,
                                "n": 0, "unparsed": 0}
