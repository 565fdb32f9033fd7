"""`dpvr bench latency --decode` on the tiny shape (eager, seconds): spread and tokens/s in the JSON, clear errors."""

from __future__ import annotations

import json

from dpvr.cli import main


def test_bench_latency_decode_cli_tiny(tmp_path, capsys):
    args = ["bench", "latency", "--decode", "--config", "tiny", "--methods", "lf,kv", "--batch-sizes", "1,2",
            "--text-tokens", "8", "--new-tokens", "2", "--warmup", "3", "--repeats", "10", "--compile", "eager",
            "--threads", "1", "--device", "cpu", "--quiet", "--out", str(tmp_path)]
    assert main(args) == 0
    report = json.loads((tmp_path / "latency-decode.json").read_text())
    assert report["kind"] == "latency-decode"
    assert report["load"]["before"] and "noisy" in report["noise"]
    rows = {(r["method"], r["batch"]): r for r in report["results"]}
    assert set(rows) == {(m, b) for m in ("vanilla", "lf", "kv") for b in (1, 2)}
    for (method, batch), r in rows.items():
        sp = r["s_per_token"]
        assert sp["n"] == 10 and sp["iqr"] == sp["p75"] - sp["p25"] and sp["median"] > 0
        assert r["tokens_per_s"]["median"] > 0 and not r["compiled"]
        assert (r["ratio_to_vanilla"] == 1.0) == (method == "vanilla")
        assert r["analytic_decode_ratio"] is not None
    assert "tokens/s" in capsys.readouterr().out


def test_bench_latency_decode_needs_enough_rounds(tmp_path, capsys):
    args = ["bench", "latency", "--decode", "--config", "tiny", "--repeats", "5", "--device", "cpu", "--out", str(tmp_path)]
    assert main(args) == 2
    assert "repeats >= 10" in capsys.readouterr().err
    assert not (tmp_path / "latency-decode.json").exists()


def test_compiled_entries_carry_their_ratio_to_eager_with_quartiles_and_the_load():
    """Compiled (dynamo tracing only: backend "eager", seconds) vs eager, paired per round; load and verdict in the report."""
    import torch

    from dpvr.efficiency.decode import DecodeSettings, measure_decode

    torch._dynamo.reset()
    try:
        report = measure_decode("tiny", ["lf"], DecodeSettings(batch_sizes=[1], text_tokens=[8], new_tokens=2,
                                                               compile_backend="eager", threads=1), progress=False)
    finally:
        torch._dynamo.reset()
    rows = {r["label"]: r for r in report["results"]}
    assert len(rows) == 4
    for label, r in rows.items():
        q = r["compiled_over_eager_p25_p75"]
        if r["compiled"]:
            assert q[0] <= r["compiled_over_eager"] <= q[1] and q[0] > 0
        else:
            assert q is None and r["compiled_over_eager"] is None
    assert len(report["load"]["before"]) == 3 and len(report["load"]["after"]) == 3
