"""The GPU speed script, rehearsed on CPU: a lent GPU machine is scarce, so the script it runs must not break there.

`scripts/gpu_bench_speed.py --device cpu` runs every part on the tiny shape (tracing-only compile backend); this
checks that each part writes its file and that the summary has a line per target, so a renamed result field or
benchmark case fails here rather than on the GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_speed_script_runs_every_part_on_cpu(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), TORCHDYNAMO_VERBOSE="0")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_bench_speed.py"), str(tmp_path), "--device", "cpu"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("decode.json", "prefill.json", "prefill_compiled.json", "equality.json", "kv_attention.json"):
        assert json.loads((tmp_path / name).read_text()), name
    summary = (tmp_path / "summary.txt").read_text()
    assert "FAILED" not in summary
    for what in ("decode per token, compiled, batch 2", "lf/vanilla prefill, batch 1, 16 text", "[compiled]/vanilla [compiled]",
                 "compiled == eager decode", "kv attention at batch 1: explicit mask", "split mask-free"):
        assert what in summary, what
