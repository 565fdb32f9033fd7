"""Progress, Ctrl-C and resuming: one line on interrupt, the demo's training continues from its last checkpoint."""

from __future__ import annotations

import pytest

from dpvr.cli import main
from dpvr.demo.timing import Estimator, duration, estimate


def test_ctrl_c_is_one_line_and_status_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("dpvr.cli.route.run", interrupted)
    assert main(["route"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dpvr route: interrupted; rerun the same command to continue"]


def test_estimates_rescale_from_measured_stages():
    est = Estimator({"analyze": 10, "train lf": 100, "evaluate": 1000})
    assert est.remaining() == pytest.approx(sum(est.base.values()))
    est.finish("analyze", 2 * est.base["analyze"], reused=False)  # this machine is twice as slow
    assert est.speed == pytest.approx(2.0)
    assert est.remaining() == pytest.approx(2 * (est.base["train lf"] + est.base["evaluate"]))
    est.finish("train lf", 1.0, reused=True)  # a reused stage says nothing about this machine's speed
    assert est.speed == pytest.approx(2.0) and est.remaining() == pytest.approx(2 * est.base["evaluate"])
    assert estimate("train lora16", 100) > estimate("train lf", 100)
    assert "analyze" in est.header() and "total" in est.header()
    assert [duration(x) for x in (5, 65, 3725)] == ["5 s", "1 min 05 s", "1 h 02 min"]


def test_demo_training_resumes_from_its_last_checkpoint(tiny_dir, tmp_path, monkeypatch):
    """Interrupted at step 3 of 4 (checkpoints every step), the rerun continues from checkpoint 2."""
    from dpvr.demo.run import DemoSettings, _train
    from dpvr.train.progress import TrainProgress

    s = DemoSettings(out=str(tmp_path), quick=True, train_steps=4, batch_size=4, progress=False)
    model, data, folder = str(tiny_dir / "model"), str(tiny_dir / "data" / "train.json"), tmp_path / "lf"
    original = TrainProgress.on_step_end

    def stop_at_3(self, args, state, control, **kw):
        if state.global_step == 3:
            raise KeyboardInterrupt
        return original(self, args, state, control, **kw)

    monkeypatch.setattr(TrainProgress, "on_step_end", stop_at_3)
    with pytest.raises(KeyboardInterrupt):
        _train("lf", model, data, 2, folder, s, digest="a", log=lambda _: None)
    assert (folder / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()
    monkeypatch.setattr(TrainProgress, "on_step_end", original)

    messages = []
    result = _train("lf", model, data, 2, folder, s, digest="a", log=messages.append)
    assert any("resuming from" in m and m.endswith("(step 2)") for m in messages), messages
    assert result["summary"]["global_steps"] == 4

    # other settings: the old checkpoints are not resumed (and are removed)
    messages.clear()
    _train("lf", model, data, 2, folder, s, digest="b", log=messages.append)
    assert not any("resuming" in m for m in messages)
