"""`dpvr eval` end to end on a tiny random LLaVA: outputs, every method kind, determinism, crashes, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import evalkit
from dpvr.cli import main
from dpvr.evaluation import EvalSettings, run_eval
from dpvr.evaluation.metrics import summarize_family
from dpvr.evaluation.report import markdown_table


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return evalkit.build(tmp_path_factory.mktemp("evaltiny"))


def _eval(tiny: Path, out: Path, *methods: str, extra=()) -> int:
    args = ["eval", "--model", str(tiny / "model"), "--benchmark", str(tiny / "data"), "--out", str(out),
            "--max-new-tokens", "1", "--device", "cpu", "--quiet"]
    for m in methods:
        args += ["--method", m]
    return main(args + list(extra))


def _predictions(out: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions" / f"{name}.jsonl").read_text().splitlines()]


def test_results_table_and_predictions(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert _eval(tiny, out, "vanilla", "vtw:k=2", extra=["--families", "pope", "mc", "count", "--blind",
                                                         "--batch-size", "4"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].startswith("| method | pope acc | pope F1 | pope yes% | mc | count | mean |")
    for row in ("| vanilla |", "| vanilla [blind] |", "| vtw(k=2) |", "| vtw(k=2) [blind] |", "| *chance* |"):
        assert row in table
    results = json.loads((out / "results.json").read_text())
    assert results["method_order"] == ["vanilla", "vanilla [blind]", "vtw(k=2)", "vtw(k=2) [blind]"]
    assert markdown_table(results) == table  # the table comes back from results.json alone
    assert results["settings"]["families"] == ["pope", "mc", "count"]
    assert results["model"]["fingerprint"]["num_hidden_layers"] == 4
    assert results["methods"]["vtw(k=2)"]["dpvr_config"]["variant"] == "vtw"
    pope = results["methods"]["vanilla"]["families"]["pope"]
    assert {"accuracy", "precision", "recall", "f1", "yes_ratio", "n"} <= set(pope)
    assert set(pope["categories"]) == {"random", "popular", "adversarial"}
    assert 0 < pope["yes_ratio"] < 100  # the fixture answers yes or no, depending on the input
    # the figures follow from the predictions file alone
    rows = _predictions(out, "vanilla")
    assert len(rows) == 18 and {r["family"] for r in rows} == {"pope", "mc", "count"}
    assert summarize_family([r for r in rows if r["family"] == "pope"]) == pope
    assert (out / "results.md").read_text().count("| vanilla |") >= 4  # main table + one per family
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left behind
    # batch size does not change a prediction
    assert _eval(tiny, tmp_path / "b1", "vanilla", extra=["--families", "pope", "mc", "count", "--batch-size", "1"]) == 0
    assert [r["prediction"] for r in _predictions(tmp_path / "b1", "vanilla")] == [r["prediction"] for r in rows]


def _trained_like_artifacts(tiny: Path, root: Path, kinds=("lf", "lora", "full")) -> dict[str, Path]:
    """A DPVR adapter, a LoRA adapter (random, non-zero) and a full checkpoint, all for the fixture's base."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlavaForConditionalGeneration

    import dpvr

    def base():
        return LlavaForConditionalGeneration.from_pretrained(tiny / "model").eval()

    torch.manual_seed(0)
    paths = {"lf": root / "lf" / "adapter", "lora": root / "lora" / "adapter", "full": root / "full" / "model"}
    if "lf" in kinds:
        dpvr.get_dpvr_model(base(), dpvr.DPVRConfig(variant="lf", split=2)).save_pretrained(paths["lf"])
    if "lora" in kinds:
        lora = get_peft_model(base(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        lora.save_pretrained(paths["lora"])
    if "full" in kinds:
        full = base()
        with torch.no_grad():
            full.model.language_model.layers[-1].mlp.down_proj.weight.mul_(1.5)
        full.save_pretrained(paths["full"])
    return {k: v for k, v in paths.items() if k in kinds}


def test_every_method_kind_on_one_base(tiny, tmp_path):
    paths = _trained_like_artifacts(tiny, tmp_path)
    methods = ["vanilla", f"lf=adapter:{paths['lf']}", f"lf+fastv=adapter:{paths['lf']},fastv_k=1,fastv_ratio=0.5",
               f"lora:{paths['lora']}", "again=vanilla", f"full:{paths['full']}", "fastv:k=1,ratio=0.5"]
    settings = EvalSettings(benchmark=str(tiny / "data"), families=["pope", "mc"], limit=3, max_new_tokens=1,
                            circular=True, device="cpu", progress=False)
    results = run_eval(methods, out=tmp_path / "out", model=str(tiny / "model"), settings=settings)
    m = results["methods"]
    assert list(m) == ["vanilla", "lf", "lf+fastv", "lora(lora)", "again", "full(full)", "fastv(k=1,ratio=0.5)"]
    assert m["lf"]["dpvr_config"]["variant"] == "lf" and m["lf+fastv"]["dpvr_config"]["fastv_k"] == 1
    assert "adapter_model.safetensors" in m["lf"]["adapter_files"]
    assert m["lora(lora)"]["peft_config"]["r"] == 4
    assert m["full(full)"]["fingerprint"]["checksum"] != results["model"]["fingerprint"]["checksum"]
    # the LoRA layers were taken out again: vanilla after it answers exactly as before
    assert _predictions(tmp_path / "out", "again") == _predictions(tmp_path / "out", "vanilla")
    # circular: every MC question asked once per rotation, scored per question
    mc_rows = [r for r in _predictions(tmp_path / "out", "vanilla") if r["family"] == "mc"]
    assert len(mc_rows) == 12 and sorted({r["rotation"] for r in mc_rows}) == [0, 1, 2, 3]
    assert m["vanilla"]["families"]["mc"]["n"] == 3 and "accuracy_first_pass" in m["vanilla"]["families"]["mc"]


def test_a_crash_leaves_no_partial_results(tiny, tmp_path, monkeypatch):
    import dpvr.evaluation.runner as runner

    settings = EvalSettings(benchmark=str(tiny / "data"), families=["pope"], limit=3, max_new_tokens=1, device="cpu",
                            progress=False)
    out = tmp_path / "out"
    run_eval(["vanilla"], out=out, model=str(tiny / "model"), settings=settings)
    before = (out / "results.json").read_text()
    real, calls = runner.evaluate_model, []

    def crash_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "evaluate_model", crash_on_second)
    for folder in (out, tmp_path / "fresh"):
        calls.clear()
        with pytest.raises(RuntimeError, match="simulated crash"):
            run_eval(["vanilla", "vtw:k=2"], out=folder, model=str(tiny / "model"), settings=settings)
        assert not folder.exists() or not [p for p in folder.iterdir() if p.name.startswith(".")]
    assert (out / "results.json").read_text() == before  # the earlier complete run is untouched
    assert [p.name for p in (out / "predictions").iterdir()] == ["vanilla.jsonl"]
    assert not (tmp_path / "fresh").exists()  # a failed run leaves no empty --out behind


def _bench_copy(tiny: Path, dst: Path, pope_lines: list[str] | None = None, images: bool = True) -> Path:
    dst.mkdir()
    if images:
        shutil.copytree(tiny / "data" / "images", dst / "images")
    lines = (tiny / "data" / "pope.jsonl").read_text().splitlines()
    (dst / "pope.jsonl").write_text("\n".join(pope_lines if pope_lines is not None else lines) + "\n")
    return dst


def test_bad_input_is_a_clear_error(tiny, tmp_path, capsys):
    from transformers import LlavaForConditionalGeneration

    import dpvr

    good = (tiny / "data" / "pope.jsonl").read_text().splitlines()
    rec = json.loads(good[0])
    mc = json.loads((tiny / "data" / "mc.jsonl").read_text().splitlines()[0])
    cases = {
        "missing family": (tiny / "data", ["--families", "nothere"], "benchmark file .*nothere.jsonl not found"),
        "missing folder": (tmp_path / "nope", [], "benchmark folder .* does not exist"),
        "missing image": (_bench_copy(tiny, tmp_path / "noimg", images=False), [], "image .* does not exist"),
        "bad json": (_bench_copy(tiny, tmp_path / "badjson", [good[0], '{"id": "x", ']), [],
                     "pope.jsonl:2: not valid JSON"),
        "no answer": (_bench_copy(tiny, tmp_path / "noans", [json.dumps({k: v for k, v in rec.items() if k != "answer"})]),
                      [], "pope.jsonl:1: record .* lacks answer"),
        "bad letter": (_bench_copy(tiny, tmp_path / "badmc", [json.dumps({**mc, "answer": "E"})]), [],
                       "answer 'E' is not one of the option letters A, B, C, D"),
        "duplicate id": (_bench_copy(tiny, tmp_path / "dup", [good[0], good[0]]), [], "duplicate id"),
    }
    for name, (bench, extra, message) in cases.items():
        out = tmp_path / f"out-{name.replace(' ', '-')}"
        assert main(["eval", "--model", str(tiny / "model"), "--benchmark", str(bench), "--method", "vanilla",
                     "--out", str(out), "--device", "cpu", "--quiet", *extra]) == 2, name
        err = capsys.readouterr().err
        assert __import__("re").search(message, err), (name, err)
        assert not (out / "results.json").exists()

    torch.manual_seed(1)  # another base of the same shape: same architecture, other weights
    other = LlavaForConditionalGeneration(LlavaForConditionalGeneration.from_pretrained(tiny / "model").config)
    dpvr.get_dpvr_model(other, dpvr.DPVRConfig(variant="lf", split=2)).save_pretrained(tmp_path / "other")
    methods = {f"adapter:{tmp_path / 'other'}": "was made for a different base model",
               f"lora:{tmp_path / 'other'}": "is a DPVR adapter, not a LoRA adapter",
               f"full:{tmp_path / 'nothing'}": "does not exist",
               "fastv:k=9": "fastv_k=9 is outside 1..3",
               "vtw:k=x": "k='x' is not an integer"}
    for spec, message in methods.items():
        assert _eval(tiny, tmp_path / "o", spec) == 2, spec
        assert message in capsys.readouterr().err, spec
        assert not (tmp_path / "o" / "results.json").exists()


def test_help_documents_the_method_grammar(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = capsys.readouterr().out
    for piece in ("[LABEL=]adapter:PATH", "lora:PATH", "full:PATH", "fastv[:k=K][,ratio=R]", "vtw:k=K", "--blind",
                  "--circular"):
        assert piece in text


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_eval_on_cuda(tiny, tmp_path):
    """bf16 on the GPU for every kind of method; fp32 on the GPU: batch size changes nothing, answers as on the CPU."""
    paths = _trained_like_artifacts(tiny, tmp_path)
    methods = ["vanilla", f"lf=adapter:{paths['lf']}", f"lf+fastv=adapter:{paths['lf']},fastv_k=1",
               f"lora:{paths['lora']}", f"full:{paths['full']}", "fastv:k=1,ratio=0.5", "vtw:k=2"]
    common = dict(benchmark=str(tiny / "data"), families=["pope", "spatial"], max_new_tokens=1, progress=False)
    bf16 = run_eval(methods, out=tmp_path / "bf16", model=str(tiny / "model"),
                    settings=EvalSettings(device="cuda", dtype="bfloat16", blind="also", batch_size=4, **common))
    assert bf16["settings"]["device"].startswith("cuda") and bf16["settings"]["dtype"] == "bfloat16"
    assert len(bf16["methods"]) == 2 * len(methods)
    for label in ("vanilla", "lf", "vtw(k=2)"):
        rows = (tmp_path / "bf16" / bf16["methods"][label]["predictions"]).read_text().splitlines()
        assert all(json.loads(r)["parsed"] in ("yes", "no") for r in rows), label
    runs = {}
    for device, batch in (("cuda", 1), ("cuda", 6), ("cpu", 6)):
        out = tmp_path / f"{device}{batch}"
        run_eval(["vanilla", f"lf=adapter:{paths['lf']}"], out=out, model=str(tiny / "model"),
                 settings=EvalSettings(device=device, dtype="float32", batch_size=batch, **common))
        runs[device, batch] = [r["prediction"] for m in ("vanilla", "lf") for r in _predictions(out, m)]
    assert runs["cuda", 1] == runs["cuda", 6]
    agree = sum(a == b for a, b in zip(runs["cuda", 6], runs["cpu", 6])) / len(runs["cpu", 6])
    assert agree >= 0.9, agree


def test_accuracy_report_for_the_tiny_build_matches_run_eval(tiny, tmp_path):
    from dpvr.evaluation import accuracy_report
    from dpvr.evaluation.loading import load_base

    settings = EvalSettings(benchmark=str(tiny / "data"), families=["pope", "count"], limit=6, max_new_tokens=1,
                            batch_size=3, device="cpu", progress=False)
    results = run_eval(["vanilla"], out=tmp_path / "out", model=str(tiny / "model"), settings=settings)
    model, processor, _ = load_base(str(tiny / "model"), device="cpu")
    rows: list = []
    report = accuracy_report(model, processor, tiny / "data", ["pope", "count"], limit=6, batch_size=3,
                             max_new_tokens=1, progress=False, predictions=rows)
    fams = results["methods"]["vanilla"]["families"]
    assert report["pope"] == {"accuracy": fams["pope"]["accuracy"], "n": 6, "chance": 50.0,
                              "categories": {c: v["accuracy"] for c, v in fams["pope"]["categories"].items()},
                              "yes_ratio": fams["pope"]["yes_ratio"]}
    assert report["count"]["accuracy"] == fams["count"]["accuracy"] and len(rows) == 12


def test_loglikelihood_agrees_with_cached_generation(tiny, tmp_path):
    """The lmms-eval plugin's loglikelihood path (one forward, no cache) against generate's first step, per method."""
    from PIL import Image

    from dpvr.evaluation.generation import Prompt, encode, loglikelihoods, user_turn
    from dpvr.evaluation.loading import load_base, load_method
    from dpvr.evaluation.methods import parse_method

    paths = _trained_like_artifacts(tiny, tmp_path, kinds=("lf",))
    base, processor, _ = load_base(str(tiny / "model"), device="cpu")
    records = [json.loads(line) for line in (tiny / "data" / "pope.jsonl").read_text().splitlines()[:4]]
    prompts = [Prompt([user_turn(r["question"])], [Image.open(tiny / "data" / r["image"]).convert("RGB")])
               for r in records]
    tok = processor.tokenizer
    for spec in ("vanilla", f"adapter:{paths['lf']}", "fastv:k=1,ratio=0.5", "vtw:k=2"):
        with load_method(parse_method(spec), base, processor) as m:
            out = m.model.generate(**encode(processor, prompts), max_new_tokens=1, do_sample=False,
                                   output_logits=True, return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
            first = torch.log_softmax(out.logits[0].float(), dim=-1)  # (B, V)
            chosen = out.sequences[:, -1]
            texts = tok.batch_decode(chosen[:, None])
            lls = loglikelihoods(m.model, processor, prompts, texts)
            for i, (lp, greedy) in enumerate(lls):
                assert greedy, (spec, i)
                assert lp == pytest.approx(float(first[i, chosen[i]]), abs=1e-4), (spec, i)
