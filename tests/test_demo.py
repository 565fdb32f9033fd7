"""dpvr demo: every stage through the library, a report whose HTML shows report.json's numbers, stage reuse."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest

from dpvr.demo import DemoSettings, run_demo
from dpvr.demo.report import SECTIONS
from dpvr.demo.stages import StageError, run_stage

METHODS = ["vanilla", "lf", "pc", "kv", "lora16", "fastv-50", "fastv-25", "lf+fastv-50", "vanilla [blind]"]


class _Checker(HTMLParser):
    """Collects ids, image sources, links and checks that every opened tag is closed."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.ids, self.srcs, self.errors, self.text = [], set(), [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        for key in ("src", "href"):
            if key in attrs:
                self.srcs.append(attrs[key])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(f"unbalanced </{tag}>")

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def demo(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    settings = DemoSettings.for_mode(True, out=str(out), model=str(tiny_dir / "model"),
                                     data=str(tiny_dir / "data" / "train.json"), train_steps=2, eval_limit=2,
                                     analysis_samples=4, families=["pope", "mc"])
    return settings, run_demo(settings, log=lambda _: None)


def test_report_has_every_section_and_method(demo):
    settings, report = demo
    html = (settings_out := __import__("pathlib").Path(settings.out) / "report.html").read_text()
    checker = _Checker()
    checker.feed(html)
    assert not checker.errors and not checker.stack
    assert set(SECTIONS) <= checker.ids
    assert all(src.startswith("data:image/png;base64,") for src in checker.srcs)  # self-contained
    assert not re.search(r"https?://", html)
    labels = [r["method"] for r in report["methods"]]
    for m in METHODS:
        assert m in labels, m
    assert any(label.startswith("vtw@") for label in labels)
    on_disk = json.loads((settings_out.parent / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))


def test_html_numbers_equal_report_json(demo):
    settings, report = demo
    html = (__import__("pathlib").Path(settings.out) / "report.html").read_text()
    for row in report["methods"]:
        assert f"<td>{row['method']}</td><td>{row['overall']:.1f}</td>" in html.replace("&amp;", "&")
        if row["flops_saving"] is not None:
            assert f"{100 * row['flops_saving']:.1f} %" in html
    for name, t in report["training"].items():
        assert f"{t['trainable_parameters']:,}" in html


def test_rerun_reuses_finished_stages(demo):
    settings, _ = demo
    messages = []
    run_demo(settings, log=messages.append)
    assert messages and all("reusing" in m for m in messages), messages


def test_failing_stage_names_itself(tmp_path):
    def boom():
        raise FileNotFoundError("no such benchmark")

    with pytest.raises(StageError, match="stage 'evaluate' failed: FileNotFoundError: no such benchmark"):
        run_stage("evaluate", tmp_path / "s", {"a": 1}, boom, log=lambda _: None)
    assert not (tmp_path / "s" / "stage.json").exists()
