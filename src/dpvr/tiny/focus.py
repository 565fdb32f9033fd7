"""Records for the build's stage (d), the focus curriculum, derived from ``train.json``.

The mixed instruction stage (c) teaches what a small model reads early (count, colour, digit);
POPE and multiple choice stay at chance there. Stage (d) trains on one family at a time, as
single questions split out of the same conversations, then on all families at a lower rate.

Multiple choice needs a skill that is not about the image at all: finding the option that names
the answer and saying its letter. :func:`mc_text_records` teaches it text-only (the answer is
stated in the question), the way LLaVA's text-only instruction data teaches answer formats.
"""

from __future__ import annotations

from dpvr.data.questions import family_of_question, mc_kind, mc_options


def _turns(records: list[dict]):
    """(record, turn index, question without ``<image>``, answer) for every QA turn of ``records``."""
    for rec in records:
        conv = rec["conversations"]
        for k in range(0, len(conv) - 1, 2):
            yield rec, k // 2, conv[k]["value"].replace("<image>\n", ""), conv[k + 1]["value"]


def focus_records(records: list[dict], families: tuple[str, ...]) -> list[dict]:
    """Single-question LLaVA records: every turn of ``records`` whose question is of ``families``.

    Each becomes ``<image>\\n question -> answer`` about the record's image (families are read
    back from the wording, :func:`family_of_question`). ``"mc/color"`` and ``"mc/shape"`` select
    one kind of multiple-choice question; ``"mc_text"`` adds :func:`mc_text_records`;
    ``"conversations"`` adds ``records`` themselves, unchanged (captions, multi-turn, text-only),
    so that a stage keeps the model on its instruction data while it focuses.
    """
    def wanted(q: str) -> bool:
        fam = family_of_question(q)
        return fam in families or (fam == "mc" and f"mc/{mc_kind(q)}" in families)

    out = mc_text_records(records) if "mc_text" in families else []
    out += list(records) if "conversations" in families else []
    out += [{"id": f"{rec['id']}-{k}", "image": rec["image"],
             "conversations": [{"from": "human", "value": "<image>\n" + q}, {"from": "gpt", "value": a}]}
            for rec, k, q, a in _turns(records) if "image" in rec and wanted(q)]
    if not out:
        raise ValueError(f"no training questions of families {families}")
    return out


def mc_text_records(records: list[dict]) -> list[dict]:
    """Text-only multiple choice: "The answer is red. What color is the circle? A. ... -> B".

    One per multiple-choice turn of ``records``; same options and letter, no image.
    """
    out = []
    for rec, k, q, letter in _turns(records):
        if family_of_question(q) != "mc":
            continue
        options = mc_options(q)
        if letter in options:
            out.append({"id": f"{rec['id']}-{k}-text",
                        "conversations": [{"from": "human", "value": f"The answer is {options[letter]}. {q}"},
                                          {"from": "gpt", "value": letter}]})
    return out
