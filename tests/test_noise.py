"""Latency ratios that cannot be read are flagged: wide spread, too few rounds, a loaded machine (wall clock)."""

from __future__ import annotations

from dpvr.efficiency.noise import assess


def _report(quartiles, repeats=5, load=0.5, clock="time.process_time (CPU time of the process, all threads)"):
    row = {"label": "lf", "batch": 1, "ratios": {"prefill": 0.8, "prefill_p25_p75": list(quartiles),
                                                "decode": 0.9, "decode_p25_p75": [0.89, 0.91]}}
    return {"settings": {"repeats": repeats}, "results": [{"label": "vanilla", "ratios": {"prefill": 1.0}}, row],
            "machine": {"cpu_count": 2}, "load": {"before": [load, 0, 0], "after": [load, 0, 0]},
            "timing_method": clock}


def test_tight_spread_is_readable():
    verdict = assess(_report([0.78, 0.82]))
    assert not verdict["noisy"] and verdict["reasons"] == []


def test_wide_spread_is_flagged():
    verdict = assess(_report([0.6, 1.0]))
    assert verdict["noisy"] and "lf prefill" in verdict["reasons"][0]


def test_one_round_is_flagged():
    assert assess(_report([0.8, 0.8], repeats=1))["noisy"]


def test_load_counts_for_wall_clock_only():
    assert assess(_report([0.78, 0.82], load=6.0, clock="time.perf_counter (wall), torch.set_num_threads(1)"))["noisy"]
    assert not assess(_report([0.78, 0.82], load=6.0))["noisy"]


def _decode_report(cmp_quartiles, vs_vanilla_quartiles=(0.95, 0.97)):
    rows = [{"method": "vanilla", "label": "vanilla", "batch": 1, "ratio_to_vanilla": 1.0,
             "ratio_to_vanilla_p25_p75": [1.0, 1.0], "compiled_over_eager": None, "compiled_over_eager_p25_p75": None},
            {"method": "vanilla", "label": "vanilla [compiled]", "batch": 1, "ratio_to_vanilla": 1.0,
             "ratio_to_vanilla_p25_p75": [1.0, 1.0], "compiled_over_eager": 0.9,
             "compiled_over_eager_p25_p75": list(cmp_quartiles)},
            {"method": "lf", "label": "lf [compiled]", "batch": 1, "ratio_to_vanilla": 0.96,
             "ratio_to_vanilla_p25_p75": list(vs_vanilla_quartiles), "compiled_over_eager": 0.9,
             "compiled_over_eager_p25_p75": [0.89, 0.91]}]
    return {"settings": {"repeats": 10}, "results": rows, "machine": {"cpu_count": 2},
            "load": {"before": [0.5, 0, 0], "after": [0.5, 0, 0]}, "timing_method": "time.process_time"}


def test_decode_bench_ratios_are_judged_too():
    assert not assess(_decode_report([0.88, 0.92]))["noisy"]
    verdict = assess(_decode_report([0.7, 1.1]))  # vanilla's own compiled/eager ratio counts
    assert verdict["noisy"] and "vanilla [compiled] compiled/eager" in verdict["reasons"][0]
    verdict = assess(_decode_report([0.88, 0.92], vs_vanilla_quartiles=(0.7, 1.2)))
    assert verdict["noisy"] and "lf [compiled] decode" in verdict["reasons"][0]


def test_a_compilation_inside_timed_rounds_is_flagged():
    report = _decode_report([0.88, 0.92])
    report["results"][2]["compiles_while_timed"] = 1
    verdict = assess(report)
    assert verdict["noisy"] and "lf [compiled] (batch 1)" in verdict["reasons"][0] and "compiler" in verdict["reasons"][0]
