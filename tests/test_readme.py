"""The README and the docs: the two commands come first, and every Python block marked as runnable runs as written.

A block is runnable when its first line is ``# Runs as written (tests/test_readme.py) ...``; each
runs in a fresh interpreter in an empty folder (each distinct block once).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARK = "# Runs as written (tests/test_readme.py)"
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _blocks(path: Path) -> list[str]:
    return [b for b in re.findall(r"```python\n(.*?)```", path.read_text(), re.S) if b.startswith(MARK)]


def _runnable() -> list[tuple[Path, int, str]]:
    """Each distinct marked block once (the docs' home page repeats the README's example)."""
    seen, out = set(), []
    for p in FILES:
        for i, b in enumerate(_blocks(p)):
            if b not in seen:
                seen.add(b)
                out.append((p, i, b))
    return out


RUNNABLE = _runnable()


def test_readme_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    first = re.search(r"```bash\n(.*?)```", text, re.S).group(1).splitlines()
    assert [line.split("#")[0].strip() for line in first] == [
        "bash scripts/setup.sh && .venv/bin/dpvr demo",
        "bash scripts/setup.sh --dev && .venv/bin/python -m pytest -q",
    ]
    assert text.index("```bash") < text.index("```python")  # nothing runnable before them


def test_readme_has_a_runnable_example():
    assert _blocks(ROOT / "README.md"), "the README's first Python example must be marked runnable"
    first = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    assert first.startswith(MARK)


@pytest.mark.parametrize("path,index,code", RUNNABLE, ids=[f"{p.relative_to(ROOT)}#{i}" for p, i, _ in RUNNABLE])
def test_marked_python_blocks_run(path, index, code, tmp_path):
    env = os.environ | {"OMP_NUM_THREADS": "1", "DPVR_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"{path.name} block {index}:\n{done.stderr[-3000:]}"
    assert done.stdout.strip(), "the example prints its answer"
