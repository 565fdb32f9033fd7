"""dpvr sweep: grid parsing, per-point folders, resume without retraining, locks, shards, the report."""

from __future__ import annotations

import json
import os

import pytest

from dpvr.sweep import SweepSettings, expand_grid, parse_grid, run_sweep
from dpvr.sweep.grid import resolve_layer_list
from dpvr.sweep.report import aggregate, write_report


def test_grid_parsing_and_expansion():
    grid = parse_grid(["split=2,3", "side_depth=1", "fusion_layers=[s+1,N-1];[N-1]", "lr=1e-3"])
    assert grid == {"split": [2, 3], "side_depth": [1], "fusion_layers": ["[s+1,N-1]", "[N-1]"], "lr": [0.001]}
    points = expand_grid(grid, ["lf"], [0, 1])
    assert len(points) == 2 * 2 * 2
    assert len({p.name for p in points}) == len(points)
    p = points[0]
    assert p.resolved_fusion_layers(num_layers=8) == [3, 7]
    assert p.group == p.name.rsplit("_seed=", 1)[0]


@pytest.mark.parametrize("spec, message", [
    (["split"], "not KEY=VALUES"),
    (["depth=1"], "unknown grid axis 'depth'"),
    (["split=a"], "grid axis 'split'"),
    (["split=1", "split=2"], "given twice"),
    (["fusion_layers=[s+x]"], "fusion_layers term"),
    (["fusion_layers=5,6"], "bracketed list"),
])
def test_grid_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_grid(spec)


def test_layer_list_needs_a_split_for_s():
    with pytest.raises(ValueError, match="uses s"):
        resolve_layer_list("[s+1]", split=None, num_layers=4)


def fake_accuracy(model_dir, adapter_dir, settings):
    """Stands in for the benchmark evaluation (tested on its own in test_eval): a number from the adapter."""
    assert (adapter_dir / "adapter_model.safetensors").is_file()
    return {"pope": 50.0, "count": 25.0 + len(str(adapter_dir)) % 3, "overall": 40.0}


def settings_for(tiny_dir, out, **kw):
    defaults = dict(out=str(out), model=str(tiny_dir / "model"), data=str(tiny_dir / "data" / "train.json"),
                    benchmark=str(tiny_dir / "data"), families=["pope", "count"], eval_limit=4, max_steps=1,
                    batch_size=4)
    return SweepSettings(**(defaults | kw))


def test_sweep_runs_resumes_and_reports(tiny_dir, tmp_path):
    points = expand_grid(parse_grid(["split=1,2", "num_fusion_layers=1"]), ["lf"], [0, 1])
    out = tmp_path / "sweep"
    settings = settings_for(tiny_dir, out)
    first = run_sweep(points[:2], settings, evaluate_fn=fake_accuracy, progress=False)
    assert len(first) == 2
    stamps = {p.name: os.path.getmtime(out / "points" / p.name / "point.json") for p in points[:2]}
    calls = []
    records = run_sweep(points, settings, evaluate_fn=lambda *a: calls.append(a) or fake_accuracy(*a), progress=False)
    assert len(records) == len(points) and len(calls) == len(points) - 2  # finished points are not retrained
    assert all(os.path.getmtime(out / "points" / n / "point.json") == t for n, t in stamps.items())
    # another recipe (more steps) is not the same point: it is retrained, not reused
    again = []
    settings.max_steps += 1
    run_sweep(points[:1], settings, evaluate_fn=lambda *a: again.append(a) or fake_accuracy(*a), progress=False)
    assert len(again) == 1
    settings.max_steps -= 1
    run_sweep(points[:1], settings, evaluate_fn=lambda *a: again.append(a) or fake_accuracy(*a), progress=False)
    assert len(again) == 2
    records = run_sweep(points, settings, evaluate_fn=fake_accuracy, progress=False)
    rec = records[0]
    assert rec["dpvr_config"]["split"] == rec["settings"]["split"]
    assert 0 < rec["flops_saving"] < 1 and rec["trainable_parameters"] > 0

    report = write_report(records, out, suggested_split=2, reference={"pope": 50.0, "count": 25.0, "overall": 37.5})
    assert "| vanilla (reference, untrained) | – | 25.0 | 50.0 | 37.5 |" in report["markdown"]
    rows = aggregate(records)
    assert len(rows) == 2 and all(r["seeds"] == [0, 1] for r in rows)
    for name in ("table.json", "table.csv", "table.md", "accuracy_vs_split.png", "accuracy_vs_flops.png"):
        assert (out / name).is_file(), name
    assert "± " in report["markdown"]
    assert json.loads((out / "table.json").read_text())["suggested_split"] == 2


def test_distill_is_a_grid_axis_and_its_points_share_one_target_cache(tiny_dir, tmp_path):
    grid = parse_grid(["distill=off,on", "distill_feature_weight=0"])
    assert grid == {"distill": [False, True], "distill_feature_weight": [0.0]}
    points = expand_grid(grid, ["lf"], [0])
    assert [p.group for p in points] == ["v=lf_kd=off_kdfeat=0", "v=lf_kd=on_kdfeat=0"]
    out = tmp_path / "sweep"
    records = run_sweep(points, settings_for(tiny_dir, out, split=1), evaluate_fn=fake_accuracy, progress=False)
    assert len(records) == 2
    args = [json.loads((out / "points" / p.name / "train" / "train_args.json").read_text()) for p in points]
    assert [a["distill"] for a in args] == [False, True]
    assert args[1]["distill_cache"] == str(out / "teacher-targets") and args[1]["distill_feature_weight"] == 0
    assert (out / "teacher-targets" / "manifest.json").is_file()
    assert "v=lf_kd=on_kdfeat=0" in write_report(records, out)["markdown"]
    with pytest.raises(ValueError, match="not on/off"):
        parse_grid(["distill=maybe"])
    with pytest.raises(ValueError, match="distill_kl_weight"):
        parse_grid(["distill_kl_weight=-1"])


def test_locked_points_are_skipped_and_stale_locks_taken_over(tiny_dir, tmp_path):
    from outlock_helpers import hold_lock

    points = expand_grid(parse_grid(["split=1,2"]), ["lf"], [0])
    out = tmp_path / "sweep"
    (out / "points").mkdir(parents=True)
    (out / "points" / f".{points[1].name}.lock").write_text("")  # a kill between creating and writing it
    with hold_lock(out / "points" / points[0].name):  # a live holder in another process
        records = run_sweep(points, settings_for(tiny_dir, out), evaluate_fn=fake_accuracy, progress=False)
    assert [r["name"] for r in records] == [points[1].name]


def test_shards_split_the_points(tiny_dir, tmp_path):
    points = expand_grid(parse_grid(["split=1,2"]), ["lf"], [0])
    out = tmp_path / "sweep"
    done0 = run_sweep(points, settings_for(tiny_dir, out, shard=(0, 2)), evaluate_fn=fake_accuracy, progress=False)
    assert [r["name"] for r in done0] == [points[0].name]
    done1 = run_sweep(points, settings_for(tiny_dir, out, shard=(1, 2)), evaluate_fn=fake_accuracy, progress=False)
    assert len(done1) == 2


def test_point_evaluation_goes_through_dpvr_eval(tiny_dir, tmp_path):
    points = expand_grid(parse_grid(["split=2"]), ["lf"], [0])
    records = run_sweep(points, settings_for(tiny_dir, tmp_path / "sweep", eval_limit=2), progress=False)
    acc = records[0]["accuracy"]
    assert set(acc) == {"pope", "count", "overall"}
    assert all(0 <= v <= 100 for v in acc.values())
    assert acc["overall"] == (acc["pope"] + acc["count"]) / 2


def test_vanilla_reference_is_the_base_model_and_is_reused(tiny_dir, tmp_path):
    from dpvr.evaluation.runner import evaluate_model, load_records
    from dpvr.sweep import reference_accuracy
    from dpvr.train.run import load_base

    settings = settings_for(tiny_dir, tmp_path / "sweep", eval_limit=2)
    ref = reference_accuracy(settings)
    base, processor = load_base(settings.model)
    records = load_records(settings.benchmark, settings.families, 2)
    fams, _ = evaluate_model(base, processor, records, settings.benchmark, batch_size=8, progress=False)
    assert {f: ref[f] for f in fams} == {f: s["accuracy"] for f, s in fams.items()}
    # reused while the evaluation settings match; recomputed when they change
    assert reference_accuracy(settings, evaluate_fn=lambda *a: pytest.fail("recomputed")) == ref
    settings.eval_limit = 3
    assert reference_accuracy(settings, evaluate_fn=lambda *a: {"overall": 1.0}) == {"overall": 1.0}
    report = write_report([], tmp_path / "sweep", reference=ref)
    assert json.loads((tmp_path / "sweep" / "table.json").read_text())["reference"] == ref
    assert report["markdown"] == "(no finished points)\n"
