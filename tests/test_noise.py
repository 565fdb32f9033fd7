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
