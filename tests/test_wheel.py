"""A user installs a wheel, not a checkout: `python -m build` makes one that works from a clean venv.

The wheel is built from a copy of the sources (pyproject.toml, README.md, src/) and installed with
``--no-deps`` into a new venv that sees this venv's third-party packages through a ``.pth`` path
line (no download; the checkout's editable dpvr is not visible, since a path line does not run the
other site folder's ``.pth`` files). From there it loads the shipped checkpoint, verifies it against
build.json, answers a shipped benchmark question, and runs the first README command's smoke-test
version, ``dpvr demo --quick``, end to end from the installed console script.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd, timeout=600, **kw):
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    assert done.returncode == 0, f"{cmd}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
def test_wheel_carries_the_package_data_and_runs_from_a_clean_venv(tmp_path):
    pytest.importorskip("build")
    src = tmp_path / "sources"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(src)])
    (wheel,) = (tmp_path / "dist").glob("dpvr-*.whl")

    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = json.loads((ROOT / "src/dpvr/embedded/checkpoint/build.json").read_text())["files"]
    want = {f"dpvr/embedded/checkpoint/{n}" for n in shipped} | {"dpvr/embedded/checkpoint/build.json"}
    want |= {f"dpvr/shapes/{p.name}" for p in (ROOT / "src/dpvr/shapes").glob("*.json")}
    want |= {f"dpvr/lmms_eval_plugin/tasks/{p.name}" for p in (ROOT / "src/dpvr/lmms_eval_plugin/tasks").iterdir()}
    assert not want - names, sorted(want - names)

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index", str(wheel)])
    purelib = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).strip()
    (Path(purelib) / "zz_test_dependencies.pth").write_text(site.getsitepackages()[0] + "\n")

    env = os.environ | {"OMP_NUM_THREADS": "1", "DPVR_CACHE": str(tmp_path / "cache"), "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    code = (
        "import json, dpvr\n"
        "from PIL import Image\n"
        "from dpvr import embedded\n"
        "from dpvr.evaluation import Prompt, generate, score, user_turn\n"
        f"assert dpvr.__file__.startswith({str(venv)!r}), dpvr.__file__\n"
        "embedded.verify()\n"
        "model, proc = embedded.load_model(), embedded.load_processor()\n"
        "q = json.loads((embedded.PATH / 'examples' / 'examples.jsonl').read_text().splitlines()[0])\n"
        "image = Image.open(embedded.PATH / 'examples' / q['image']).convert('RGB')\n"
        "(answer,) = generate(model, proc, [Prompt([user_turn(q['question'])], [image])], max_new_tokens=4)\n"
        "assert score(q, answer)['correct'], answer\n"
        "print('answer', answer)\n"
    )
    assert "answer Yes" in _run([str(py), "-c", code], cwd=tmp_path, env=env)
    demo = tmp_path / "demo"
    out = _run([str(venv / "bin" / "dpvr"), "demo", "--quick", "--quiet", "--out", str(demo)], cwd=tmp_path, env=env,
               timeout=2400)  # ~80 s on 2 idle cores; far longer on a loaded machine
    report = json.loads((demo / "report.json").read_text())
    assert report["context"]["settings"]["quick"] is True and report["methods"], sorted(report)
    html = (demo / "report.html").read_text()
    assert "Smoke-test numbers" in html and "<img" in html, out[-2000:]
