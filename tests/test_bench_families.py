"""`dpvr bench latency` (prefill + cached decode, and `--decode` on static caches) on a tiny random model of every
family in the adapter registry: the CLI builds the model from a config.json with a prompt layout, feeds it the
family's own inputs and decodes with every method. No timing thresholds: the checks are that every method ran,
and that the KV-cache bytes each method's cache holds after prefill equal the analytic figure of the same layout
(so the prompt the bench feeds and the layout the FLOPs model counts are the same tokens).

A family added to `dpvr.backbones` without a tiny model in `tests/families.py` fails here.
"""

from __future__ import annotations

import json

import pytest
from families import FAMILIES

from dpvr.backbones import supported_model_types
from dpvr.cli import main

METHODS = "lf,kv,fastv,vtw"
# Gemma 3's sliding-window layers: the stock cache keeps the last `sliding_window` (6 here) positions, a routed
# text view keeps every key there (see backbones/gemma3.py), so its measured KV bytes differ from the analytic count.
KV_NOT_ANALYTIC = {"gemma3"}


def _shape(tmp_path, family: str):
    """config.json of the family's tiny model (tests/families.py) with a prompt layout: one 16x32 image, and a
    4-frame 16x16 video for the video families."""
    config = FAMILIES[family].make().config
    data = config.to_dict()
    layouts = {"image": [{"kind": "image", "height": 16, "width": 32}]}
    if FAMILIES[family].has_video:
        layouts["video"] = [{"kind": "video", "height": 16, "width": 16, "frames": 4}]
    limits = {"min_pixels": 64, "max_pixels": 4096}
    data["_dpvr"] = {"split": 3, "system_tokens": 4, "layouts": layouts,
                     "processor": {"image": limits, "video": dict(limits, timestamp_tokens=2)}}
    path = tmp_path / f"{family}.json"
    path.write_text(json.dumps(data))
    return path


def _run(*args) -> int:
    return main(["bench", "latency", *args, "--threads", "1", "--device", "cpu", "--quiet", "--no-plot"])


@pytest.mark.parametrize("family", supported_model_types())
def test_bench_latency_runs_on_every_family(family, tmp_path, capsys):
    shape = _shape(tmp_path, family)
    layouts = ["image", "video"] if FAMILIES[family].has_video else ["image"]
    for layout in layouts:
        out = tmp_path / layout
        assert _run("--config", str(shape), "--layout", layout, "--methods", METHODS, "--text-tokens", "6",
                    "--new-tokens", "2", "--warmup", "0", "--repeats", "1", "--no-memory", "--out", str(out)) == 0
        report = json.loads((out / "latency.json").read_text())
        assert report["skipped"] == []
        rows = {r["method"]: r for r in report["results"]}
        assert set(rows) == {"vanilla", *METHODS.split(",")}, (layout, sorted(rows))
        for method, r in rows.items():
            assert r["prefill_s"]["n"] == 1 and r["decode_s_per_token"]["median"] > 0, (layout, method)
            assert r["kv_cache_bytes"] > 0
            if family not in KV_NOT_ANALYTIC:
                assert r["ratios"]["kv_cache"] == pytest.approx(r["analytic"]["kv_cache_bytes_ratio"]), (layout, method)

    out = tmp_path / "decode"
    assert _run("--decode", "--config", str(shape), "--methods", "lf,fastv", "--text-tokens", "6", "--new-tokens", "1",
                "--warmup", "3", "--repeats", "10", "--compile", "eager", "--out", str(out)) == 0
    report = json.loads((out / "latency-decode.json").read_text())
    assert {r["method"] for r in report["results"]} == {"vanilla", "lf", "fastv"}
    assert all(r["tokens_per_s"]["median"] > 0 for r in report["results"])
    capsys.readouterr()
