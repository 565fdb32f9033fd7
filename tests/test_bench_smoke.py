"""`dpvr bench` end to end on the tiny shape: runs in seconds, writes JSON + PNG. No timing assertions."""

from __future__ import annotations

import json

import pytest
import torch

import dpvr
from dpvr.cli import main
from dpvr.shapes import load_shape_config, parameter_counts

needs_engine = pytest.mark.skipif(not hasattr(dpvr, "get_dpvr_model"), reason="routing engine not available")


def test_bench_flops_cli(tmp_path, capsys):
    assert main(["bench", "flops", "--config", "llava-1.5-7b", "--text-tokens", "128", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "flops.json").read_text())
    assert (tmp_path / "flops.png").stat().st_size > 0
    lf = next(r for r in report["rows"] if r["method"] == "lf")
    assert lf["saving_lm"] == pytest.approx(0.29, abs=0.01)
    assert {r["method"] for r in report["rows"]} == {"vanilla", "lf", "pc", "kv", "ideal", "fastv", "vtw", "lf+fastv"}
    assert report["parameters"]["side_branch"] == 202_383_360
    assert "lf(s=18,K=1,D=1)" in capsys.readouterr().out


@needs_engine
def test_bench_latency_cli_tiny(tmp_path):
    args = ["bench", "latency", "--config", "tiny", "--methods", "lf,kv,fastv,vtw", "--text-tokens", "8", "--new-tokens", "2",
            "--warmup", "0", "--repeats", "1", "--threads", "1", "--device", "cpu", "--quiet", "--out", str(tmp_path)]
    assert main(args) == 0
    report = json.loads((tmp_path / "latency.json").read_text())
    assert (tmp_path / "latency.png").stat().st_size > 0
    assert report["skipped"] == []
    rows = {r["method"]: r for r in report["results"]}
    assert set(rows) == {"vanilla", "lf", "kv", "fastv", "vtw"}
    for r in rows.values():
        assert r["prefill_s"]["n"] == 1 and r["decode_s_per_token"]["median"] > 0
        assert r["peak_prefill_bytes"] > 0
        # the cache really holds what the analytic model says: text layers drop the image positions
        assert r["kv_cache_bytes"] == r["analytic"]["kv_cache_bytes"]
    assert rows["lf"]["ratios"]["kv_cache"] < 1 and rows["kv"]["ratios"]["kv_cache"] == 1


@needs_engine
def test_bench_train_cli_tiny(tmp_path):
    args = ["bench", "train", "--config", "tiny", "--methods", "lf,lora4,full", "--text-tokens", "8",
            "--warmup", "0", "--repeats", "1", "--threads", "1", "--device", "cpu", "--quiet", "--out", str(tmp_path)]
    assert main(args) == 0
    report = json.loads((tmp_path / "train.json").read_text())
    rows = {r["method"]: r for r in report["results"]}
    counts = parameter_counts(load_shape_config("tiny"), dpvr.DPVRConfig(variant="lf", split=2))
    assert rows["lf"]["trainable_parameters"] == counts["side_branch"]
    assert rows["lora4"]["trainable_parameters"] < rows["full"]["trainable_parameters"]
    assert all(r["peak_step_bytes"] > 0 for r in rows.values())


def test_bench_bad_input_is_a_clear_error(tmp_path, capsys):
    assert main(["bench", "flops", "--methods", "lf,fastvv", "--out", str(tmp_path)]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert main(["bench", "flops", "--config", "nope-7b", "--out", str(tmp_path)]) == 2
    assert "not a bundled shape" in capsys.readouterr().err
    assert main(["bench", "flops", "--split", "40", "--out", str(tmp_path)]) == 2
    assert "split=40" in capsys.readouterr().err
    assert main(["bench", "train", "--config", "tiny", "--methods", "lora", "--out", str(tmp_path)]) == 2
    assert "unknown training method" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse's own refusal: usage and one error line
        main(["bench", "latency", "--compile", "sometimes", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--compile: invalid choice: 'sometimes'" in capsys.readouterr().err
    from dpvr.efficiency.latency import LatencySettings

    with pytest.raises(ValueError, match="unknown compile 'sometimes': choose one of eager, compiled, both"):
        LatencySettings(compile="sometimes")
    assert not (tmp_path / "flops.json").exists() and not (tmp_path / "latency.json").exists()


@needs_engine
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bench_latency_cuda_tiny(tmp_path):
    args = ["bench", "latency", "--config", "tiny", "--methods", "lf", "--text-tokens", "8", "--new-tokens", "2",
            "--warmup", "1", "--repeats", "2", "--device", "cuda", "--dtype", "bf16", "--quiet", "--out", str(tmp_path)]
    assert main(args) == 0
    report = json.loads((tmp_path / "latency.json").read_text())
    assert report["timing_method"] == "CUDA events" and "max_memory_allocated" in report["memory_method"]
    for r in report["results"]:
        assert r["kv_cache_bytes"] == r["analytic"]["kv_cache_bytes"] and r["peak_prefill_bytes"] > 0


@needs_engine
def test_bench_latency_compiled_prefill_rows():
    """--compile both: each method also runs with its prefill compiled, paired with vanilla compiled the same way
    and with its own eager twin; no compilation inside a timed round after the untimed compile rounds."""
    from dpvr.efficiency.latency import LatencySettings, format_latency_table, measure_latency

    torch._dynamo.reset()
    s = LatencySettings(text_tokens=[8], batch_sizes=[1], new_tokens=1, warmup=0, repeats=2, threads=1,
                        measure_memory=False, compile="both", compile_backend="eager")
    report = measure_latency("tiny", ["lf"], s, progress=False)
    rows = {r["label"]: r for r in report["results"]}
    assert set(rows) == {"vanilla", "vanilla [compiled]", "lf(s=2,K=1,D=1)", "lf(s=2,K=1,D=1) [compiled]"}
    for label, r in rows.items():
        compiled = label.endswith("[compiled]")
        assert r["compiled"] is compiled and r["prefill_s"]["n"] == 2
        assert (r.get("compiles_while_timed") == 0) if compiled else ("compiles_while_timed" not in r)
        assert (r.get("compiled_over_eager") is not None) is compiled
        # the same method, compiled or not, holds the same cache and has the same analytic ratios
        assert r["analytic"] == rows[r["method_label"]]["analytic"]
        assert r["kv_cache_bytes"] == rows[r["method_label"]]["kv_cache_bytes"]
    assert rows["vanilla [compiled]"]["ratios"]["prefill"] == 1.0
    assert "cmp/eager" in format_latency_table(report)


def test_compile_room_raises_dynamos_limit_inside_only():
    from dpvr.efficiency.compiling import compile_room

    before = torch._dynamo.config.recompile_limit
    with compile_room(before + 50) as limit:
        assert torch._dynamo.config.recompile_limit == limit == before + 50
    assert torch._dynamo.config.recompile_limit == before
    with compile_room(1) as limit:  # never lowered
        assert limit == before
