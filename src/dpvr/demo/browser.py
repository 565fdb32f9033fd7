"""Open a demo report in headless Chromium: collect errors and optionally save a screenshot.

Used by the report test (the report must open in a real browser without errors) and to
regenerate the README's picture of the report::

    python -m dpvr.demo.browser docs/results/demo/report.html --screenshot docs/results/demo/report.png

Needs Chromium (Debian: ``apt-get install chromium``) and the ``playwright`` Python package
(``pip install -e .[dev]``); Playwright drives the system Chromium, it downloads no browser.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

#: Flags for a closed network: without the background-networking ones Chromium keeps trying to
#: reach Google's hosts; --no-sandbox because CI runs as root.
CHROMIUM_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync")
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable ($DPVR_CHROMIUM first), or None."""
    env = os.environ.get("DPVR_CHROMIUM")
    if env:
        return env if Path(env).exists() else None
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageCheck:
    """What the browser saw: errors of any kind, requests that left the file, broken images."""

    errors: list[str] = field(default_factory=list)
    external_requests: list[str] = field(default_factory=list)
    images: int = 0
    broken_images: list[str] = field(default_factory=list)
    section_ids: list[str] = field(default_factory=list)
    title: str = ""

    @property
    def ok(self) -> bool:
        return not (self.errors or self.external_requests or self.broken_images)


def check_report(path: str | os.PathLike, screenshot: str | os.PathLike | None = None, width: int = 1200,
                 chromium: str | None = None, height: int | None = None) -> PageCheck:
    """Load ``path`` in headless Chromium and report what went wrong (see :class:`PageCheck`).

    The screenshot is the whole page, or its top ``height`` pixels when ``height`` is given.
    """
    from playwright.sync_api import sync_playwright

    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run `dpvr demo` first (it writes report.html)")
    exe = chromium or find_chromium()
    if exe is None:
        raise FileNotFoundError("no Chromium found: install it (Debian: apt-get install chromium) or set DPVR_CHROMIUM")
    res = PageCheck()
    url = path.as_uri()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=list(CHROMIUM_ARGS))
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.on("pageerror", lambda e: res.errors.append(f"page error: {e}"))
            page.on("console", lambda m: res.errors.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)
            page.on("requestfailed", lambda r: res.errors.append(f"request failed: {r.url[:80]}"))
            page.on("request", lambda r: None if r.url == url or r.url.startswith("data:")
                    else res.external_requests.append(r.url))
            response = page.goto(url, wait_until="load")
            if response is not None and not response.ok:
                res.errors.append(f"loading {url} gave HTTP {response.status}")
            res.title = page.title()
            # every <img> decoded to a real bitmap
            for src, w in page.eval_on_selector_all("img", "els => els.map(e => [e.src.slice(0, 40), e.naturalWidth])"):
                res.images += 1
                if not w:
                    res.broken_images.append(src)
            res.section_ids = page.eval_on_selector_all("section[id]", "els => els.map(e => e.id)")
            if screenshot is not None:
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                tmp = Path(screenshot).with_suffix(".tmp.png")
                if height:
                    page.screenshot(path=str(tmp), full_page=True,
                                    clip={"x": 0, "y": 0, "width": width, "height": height})
                else:
                    page.screenshot(path=str(tmp), full_page=True)
                os.replace(tmp, screenshot)
        finally:
            browser.close()
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dpvr.demo.browser",
                                 description="Open a dpvr demo report.html in headless Chromium, list any errors "
                                             "(page errors, console errors, external requests, broken images) "
                                             "and optionally save a full-page screenshot.")
    ap.add_argument("report", help="path of the report.html written by `dpvr demo`")
    ap.add_argument("--screenshot", default=None, help="write a full-page PNG screenshot here")
    ap.add_argument("--width", type=int, default=1200, help="viewport width in pixels (default 1200)")
    ap.add_argument("--height", type=int, default=None,
                    help="screenshot only the top HEIGHT pixels of the page (default: the whole page)")
    args = ap.parse_args(argv)
    try:
        res = check_report(args.report, args.screenshot, args.width, height=args.height)
    except (FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.report}: title {res.title!r}, {res.images} images, sections {', '.join(res.section_ids)}")
    for line in res.errors + [f"external request: {u}" for u in res.external_requests] + \
            [f"broken image: {s}" for s in res.broken_images]:
        print("  " + line)
    if args.screenshot:
        print(f"screenshot: {args.screenshot}")
    return 0 if res.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
