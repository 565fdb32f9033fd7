"""``dpvr tiny build --quick`` end to end, and determinism of the training stages."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from dpvr.tiny.model import TinyArch, build_clip, build_llava


@pytest.mark.slow
def test_quick_build_writes_a_loadable_checkpoint(tmp_path, capsys):
    from dpvr.cli import main

    out = tmp_path / "tiny"
    assert main(["tiny", "build", "--out", str(out), "--quick", "--quiet"]) == 0
    info = json.loads((out / "build.json").read_text())
    assert set(info["results"]) == {"pope", "mc", "count", "color", "spatial", "digit"}
    for r in info["results"].values():
        assert {"accuracy", "blind", "chance", "n"} <= set(r)
    stages = ["clip", "align", "instruct", "focus_pope", "focus_all"]
    assert list(info["stages"]) == stages
    assert [st["name"] for st in info["config"]["focus"]] == stages[3:]
    assert (out / "logs" / "losses.png").stat().st_size > 0
    logged = [json.loads(x)["stage"] for x in (out / "logs" / "losses.jsonl").read_text().splitlines()]
    assert list(dict.fromkeys(logged)) == stages
    # the gated stage was checked on validation items during its run, every family after the round
    gates = [(g["stage"], g["when"]) for g in info["gates"]]
    assert gates == [("instruct", "end"), ("focus_pope", "during"), ("round 1", "end")]
    assert list(info["gates"][1]["families"]) == ["pope"] and info["gates"][1]["families"]["pope"]["blind"] >= 0
    # the package gets the checkpoint only: no logs, losses or predictions
    assert sorted(info["files"]) == sorted(["chat_template.jinja", "config.json", "examples/examples.jsonl",
                                            "generation_config.json", "model.safetensors", "processor_config.json",
                                            "tokenizer.json", "tokenizer_config.json"]
                                           + [f"examples/{p.name}" for p in (out / "examples").glob("*.png")])
    dest = tmp_path / "export"
    from dpvr.tiny.build import export_checkpoint

    assert sorted(export_checkpoint(out, dest)) == sorted(list(info["files"]) + ["build.json"])
    assert not (dest / "logs").exists() and not (dest / "losses.png").exists()
    model = LlavaForConditionalGeneration.from_pretrained(out)
    proc = AutoProcessor.from_pretrained(out)
    cfg = model.config
    assert cfg.text_config.num_hidden_layers >= 8
    assert cfg.vision_feature_layer == -2 and cfg.vision_feature_select_strategy == "default"
    assert proc.tokenizer.convert_ids_to_tokens(cfg.image_token_id) == "<image>"
    assert "family" in capsys.readouterr().out


class _FakeGate:
    """Scores from a script: family -> above-blind margin after each run of the stages named for it."""

    def __init__(self, gains: dict[str, list[float]]):
        self.gains, self.runs = gains, {f: 0 for f in gains}

    def check(self, model, families, margin=None):
        margin = 15.0 if margin is None else margin
        fams = {f: {"accuracy": 50.0 + self.gains[f][min(self.runs[f], len(self.gains[f]) - 1)], "blind": 50.0}
                for f in families}
        for v in fams.values():
            v["above_blind"] = v["accuracy"] - v["blind"]
        return {"passed": all(v["above_blind"] >= margin for v in fams.values()), "margin": margin, "families": fams}


class _FakeRun:
    def __init__(self, gate):
        self.gate, self.model, self.timings, self.names = gate, None, {}, []

    def __call__(self, name, stage_cfg, records, eval_fn=None, stop_when=None):
        self.names.append(name)
        for f in self.gate.runs:
            if name.endswith(f"focus_{f}"):
                self.gate.runs[f] += 1
        if eval_fn is not None:  # one check in the middle of the stage
            stop_when({"step": 0, **eval_fn(self.model)})


def _rounds(monkeypatch, gains, rounds=3):
    from dataclasses import replace

    from dpvr.tiny import build as B

    monkeypatch.setattr(B, "focus_records", lambda records, families: [])
    monkeypatch.setattr(B, "FAMILIES", tuple(gains))
    gate = _FakeGate(gains)
    run = _FakeRun(gate)
    cfg = replace(B.BuildConfig.full(), focus_rounds=rounds)
    log: list[dict] = []
    try:
        B._focus_rounds(run, gate, cfg, [], log, progress=False)
        err = None
    except B.GateError as e:
        err = str(e)
    return run.names, log, err


def test_focus_rounds_repeat_only_the_families_below_the_gate(monkeypatch):
    # spatial clears after its first stage, mc only after its second run (in round 2)
    names, log, err = _rounds(monkeypatch, {"pope": [0, 30], "spatial": [0, 20], "mc": [0, 5, 30]})
    assert err is None
    assert names == ["focus_pope", "focus_spatial", "focus_mc_text", "focus_mc", "focus_all",
                     "r2_focus_mc_text", "r2_focus_mc", "r2_focus_all"]
    assert [g["stage"] for g in log if g["when"] == "end"] == ["instruct", "round 1", "round 2"]
    assert log[-1]["passed"]


def test_focus_rounds_fail_loudly_naming_the_family_and_its_stages(monkeypatch):
    names, log, err = _rounds(monkeypatch, {"pope": [0, 30], "spatial": [0, 20], "mc": [0, 5]}, rounds=2)
    assert names[-1] == "r2_focus_all" and "r2_focus_pope" not in names
    assert err is not None and "\n" not in err
    assert "mc 55.0 (blind 50.0, +5.0)" in err and "focus_mc_text, focus_mc" in err and "pope" not in err.split("—")[0]


def test_a_failed_gate_is_one_line_and_exit_1(monkeypatch, tmp_path, capsys):
    from dpvr.cli import main
    from dpvr.tiny import build as B
    from dpvr.tiny.gates import GateError

    def fail(*a, **k):
        raise GateError("the build failed its validation gate after 3 focus round(s): mc ...")

    monkeypatch.setattr(B, "build", fail)
    assert main(["tiny", "build", "--out", str(tmp_path / "t"), "--quick", "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dpvr tiny build: the build failed its validation gate")


def test_a_build_that_fails_its_gate_keeps_the_old_output_and_its_own_logs(tmp_path, monkeypatch):
    from dataclasses import replace

    from dpvr.tiny import build as B

    def failing_build(staging, final, cfg, data_dir, progress, command):  # as _build does: logs first, then the gate
        (staging / "logs").mkdir()
        (staging / "logs" / "losses.jsonl").write_text("")
        (staging / "logs" / "gates.jsonl").write_text('{"stage": "round 1"}\n')
        raise B.GateError("the build failed its validation gate after 1 focus round(s): mc ...")

    monkeypatch.setattr(B, "_build", failing_build)
    out = tmp_path / "tiny"
    out.mkdir()
    (out / "old.txt").write_text("previous build")
    with pytest.raises(B.GateError, match=r"mc \.\.\.; its logs: .*tiny\.failed-logs"):
        B.build(out, replace(B.BuildConfig.quick(), focus_rounds=1), overwrite=True, progress=False)
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    kept = tmp_path / "tiny.failed-logs"
    assert (kept / "gates.jsonl").read_text() == '{"stage": "round 1"}\n' and (kept / "losses.jsonl").exists()
    assert not list(tmp_path.glob(".tiny.tmp-*"))


def test_build_on_given_data_records_that_datas_config(tmp_path):
    """With --data, build.json's data config is the dataset's own (embedded.benchmark_dir regenerates
    the benchmark from it), not the defaults."""
    from dpvr.cli import main
    from dpvr.data import generate_dataset

    manifest = generate_dataset(tmp_path / "d", seed=0, num_train=120, num_test_per_family=6,
                                spatial_pair_fraction=0.0, progress=False)
    out = tmp_path / "tiny"
    assert main(["tiny", "build", "--out", str(out), "--quick", "--no-focus", "--data", str(tmp_path / "d"),
                 "--quiet"]) == 0
    info = json.loads((out / "build.json").read_text())
    assert info["config"]["data"] == manifest["config"]
    assert info["config"]["data"]["spatial_pair_fraction"] == 0.0
    assert info["config"]["focus"] == [] and "focus_pope" not in info["stages"]
    assert info["command"][-4:] == ["--no-focus", "--data", str(tmp_path / "d"), "--quiet"]


def test_build_refuses_data_from_an_unknown_generator(tmp_path):
    from dpvr.cli import main
    from dpvr.data import generate_dataset

    generate_dataset(tmp_path / "d", seed=0, num_train=4, num_test_per_family=6, progress=False)
    mpath = tmp_path / "d" / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["config"]["future_setting"] = 1
    mpath.write_text(json.dumps(manifest))
    out = tmp_path / "tiny"
    assert main(["tiny", "build", "--out", str(out), "--quick", "--data", str(tmp_path / "d"), "--quiet"]) == 2
    assert not (out / "build.json").exists()


def _tiny_arch():
    return TinyArch(vision_hidden=32, vision_layers=2, vision_heads=2, vision_intermediate=64, clip_text_hidden=32,
                    projection_dim=16, lm_hidden=32, lm_heads=2, lm_kv_heads=2, lm_intermediate=64)


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    """Run under 1 and 2 torch threads (the build's --threads): each count is its own deterministic path."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def test_clip_stage_is_deterministic(threads):
    from dpvr.tiny.clip_stage import pretrain_clip

    def run():
        clip = build_clip(_tiny_arch(), 40, seed=5)
        g = torch.Generator().manual_seed(0)
        pix = torch.randn(12, 3, 64, 64, generator=g)
        ids = torch.randint(5, 40, (12, 7), generator=g)
        ids[:, -1] = 3  # </s>
        pretrain_clip(clip, pix, ids, torch.ones_like(ids), [[i, i + 1] for i in range(0, 12, 2)], steps=3,
                      batch_size=8, lr=1e-3, seed=1, warmup=1, progress=False)
        return clip.state_dict()

    a, b = run(), run()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lm_stage_is_deterministic_and_learns(threads):
    from dpvr.tiny.lm_stage import Example, train_lm

    arch = _tiny_arch()
    ex = [Example([4] * 64 + [10 + i % 5, 11, 3], [-100] * 65 + [11, 3], i % 4) for i in range(16)]

    def run():
        model = build_llava(arch, 40, seed=2)
        feats = torch.randn(4, 64, arch.vision_hidden, generator=torch.Generator().manual_seed(0))
        rows = train_lm(model, feats, ex, stage="instruct", steps=12, batch_tokens=300, lr=3e-3, seed=0, warmup=1,
                        progress=False)
        return model.state_dict(), rows

    (a, ra), (b, rb) = run(), run()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert ra[-1]["loss"] < ra[0]["loss"]
