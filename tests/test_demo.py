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
    for f in report["frontier"].values():  # the front under the plot, as report.json names it
        assert f["methods"] and f'<p class="frontier">{f["sentence"]}</p>' in __import__("html").unescape(html)


def test_rerun_reuses_finished_stages(demo):
    settings, _ = demo
    messages = []
    run_demo(settings, log=messages.append)
    stages = [m for m in messages if m.startswith("[")]
    assert len(stages) == 7 and all("reusing" in m for m in stages), messages
    assert messages[0].startswith("dpvr demo: 7 stages")  # the plan with its estimates comes first


def test_failing_stage_names_itself(tmp_path):
    def boom():
        raise FileNotFoundError("no such benchmark")

    with pytest.raises(StageError, match="stage 'evaluate' failed: FileNotFoundError: no such benchmark"):
        run_stage("evaluate", tmp_path / "s", {"a": 1}, boom, log=lambda _: None)
    assert not (tmp_path / "s" / "stage.json").exists()


def _browser_or_skip():
    """Chromium + playwright, or skip (CI installs both, so there a missing browser fails)."""
    import os

    from dpvr.demo.browser import find_chromium

    try:
        import playwright  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("playwright not installed (pip install -e .[dev])")
    if find_chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have Chromium (.ci/run installs Debian's chromium)")
        pytest.skip("no Chromium on this machine (apt-get install chromium)")


def test_report_opens_in_headless_chromium(demo, tmp_path):
    _browser_or_skip()
    from dpvr.demo.browser import check_report

    settings, _ = demo
    shot = tmp_path / "report.png"
    res = check_report(__import__("pathlib").Path(settings.out) / "report.html", screenshot=shot)
    assert res.ok, (res.errors, res.external_requests, res.broken_images)
    assert res.images >= 3 and not res.broken_images
    assert set(SECTIONS) <= set(res.section_ids)
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_browser_check_catches_a_broken_page(tmp_path):
    _browser_or_skip()
    from dpvr.demo.browser import check_report

    page = tmp_path / "bad.html"
    page.write_text('<!doctype html><html><head><title>bad</title></head><body>'
                    '<img src="data:image/png;base64,AAAA"><img src="http://example.invalid/x.png">'
                    '<script>undefinedFunction()</script></body></html>')
    res = check_report(page)
    assert not res.ok
    assert any("undefinedFunction" in e for e in res.errors)
    assert res.external_requests == ["http://example.invalid/x.png"]
    assert len(res.broken_images) == 2


def test_report_marks_smoke_tests_noisy_latency_and_stage_times(demo):
    import copy
    from pathlib import Path

    from dpvr.demo.report import render_html

    settings, report = demo
    html = (Path(settings.out) / "report.html").read_text()
    assert 'id="smoke-test"' in html and "2 questions per benchmark family" in html  # --quick, eval_limit=2
    assert report["sample"] == {**report["sample"], "smoke_test": True, "questions_per_family": 2,
                                "accuracy_step_points": 50.0}
    assert set(report["timings"]["stages"]) == {"analyze", "train lf", "train pc", "train kv", "train lora16",
                                                "evaluate", "efficiency"}
    assert all(t["seconds"] > 0 for t in report["timings"]["stages"].values())
    for r in report["latency"]["results"]:  # every measured ratio comes with its spread
        assert len(r["ratios"]["prefill_p25_p75"]) == 2
    noisy = copy.deepcopy(report)
    noisy["latency"]["noise"] = {"noisy": True, "reasons": ["3 ratio(s) vary by more than 20% between rounds"]}
    assert 'id="noisy-latency"' in render_html(noisy, Path(settings.out))
    quiet = copy.deepcopy(report)
    quiet["latency"]["noise"] = {"noisy": False, "reasons": []}
    quiet["sample"]["smoke_test"] = False
    page = render_html(quiet, Path(settings.out))
    assert 'id="noisy-latency"' not in page and 'id="smoke-test"' not in page
