"""The vLLM plugin (``dpvr.serve``) against dpvr's HF engine: same greedy tokens for every variant.

Runs in the serve venv (``scripts/setup_serve.sh``; CI runs it as its own step) and is skipped where
vLLM is absent. The reference tokens come from ``tests/serve_reference.py``, run with the main venv's
Python (``DPVR_MAIN_PYTHON``, default ``.venv/bin/python``), because vLLM's environment cannot import
the engine. Each variant serves 14 prompts of 21 to 150 tokens submitted together (continuous
batching), then a request that repeats the first one's image and question (prefix caching on, 32-token
blocks: the cached prefix ends inside the image span). ``lf`` and ``kv`` also run with 48-token prefill chunks,
so image spans are split across steps. ``dpvr serve`` answers an OpenAI chat-completions request with a
base64 image as ``dpvr eval``'s generation code does, and refuses a mismatched adapter before starting.
"""

from __future__ import annotations

import base64
import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

vllm = pytest.importorskip("vllm")

ROOT = Path(__file__).resolve().parents[1]
MAIN_PYTHON = Path(os.environ.get("DPVR_MAIN_PYTHON", ROOT / ".venv" / "bin" / "python"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    if not MAIN_PYTHON.is_file():
        pytest.skip(f"no main venv at {MAIN_PYTHON} for the HF reference (set DPVR_MAIN_PYTHON)")
    out = tmp_path_factory.mktemp("serve-ref")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")} | {"OMP_NUM_THREADS": "1"}
    subprocess.run([str(MAIN_PYTHON), str(ROOT / "tests" / "serve_reference.py"), str(out)], check=True, env=env,
                   cwd=ROOT, stdout=subprocess.DEVNULL)
    ref = json.loads((out / "reference.json").read_text())
    ref["root"] = out
    return ref


@pytest.fixture(autouse=True)
def _vllm_env(monkeypatch):
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in this process: no spawn, faster start
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB


def _llm(ref: dict, name: str, **extra):
    from vllm import LLM

    from dpvr.serve import llm_kwargs

    adapter = None if name == "vanilla" else ref["root"] / "adapters" / name
    return LLM(**llm_kwargs(ref["checkpoint"], adapter) | dict(
        enforce_eager=True, max_model_len=512, max_num_seqs=16, dtype="float32", enable_prefix_caching=True,
        block_size=32, seed=0, **extra))


def _request(ref: dict, prompt: dict) -> dict:
    from PIL import Image

    req = {"prompt": prompt["text"]}
    if prompt["image"]:
        req["multi_modal_data"] = {"image": Image.open(Path(ref["checkpoint"]) / "examples" / prompt["image"]).convert("RGB")}
    return req


def _generate(ref: dict, llm) -> dict:
    from vllm import SamplingParams

    vocab = llm.llm_engine.model_config.get_vocab_size()
    banned = {ref["image_token_id"], ref["eos_token_id"]}  # as the reference: suppressed, so every step decodes
    params = SamplingParams(max_tokens=ref["max_new_tokens"], temperature=0,
                            allowed_token_ids=[t for t in range(vocab) if t not in banned])
    prompts = ref["prompts"]
    first = [i for i, p in enumerate(prompts) if "shares_prefix_with" not in p]
    later = [i for i, p in enumerate(prompts) if "shares_prefix_with" in p]
    outs = dict(zip(first, llm.generate([_request(ref, prompts[i]) for i in first], params, use_tqdm=False)))
    outs.update(zip(later, llm.generate([_request(ref, prompts[i]) for i in later], params, use_tqdm=False)))
    return outs


def _check(ref: dict, name: str, **extra) -> None:
    llm = _llm(ref, name, **extra)
    try:
        outs = _generate(ref, llm)
    finally:
        del llm
        gc.collect()
    assert len(outs) >= 8
    for i, out in sorted(outs.items()):
        assert list(out.prompt_token_ids) == ref["prompts"][i]["prompt_token_ids"], f"prompt {i} tokenised differently"
    got = [list(outs[i].outputs[0].token_ids) for i in sorted(outs)]
    want = ref["outputs"][name]
    wrong = [i for i, (g, w) in enumerate(zip(got, want)) if g != w]
    assert not wrong, f"{name}: prompts {wrong} differ from the HF engine: " + "; ".join(
        f"{i}: vllm {got[i]} hf {want[i]}" for i in wrong[:3])
    for i in outs:
        if "shares_prefix_with" in ref["prompts"][i]:
            assert outs[i].num_cached_tokens > 0, "the shared prefix was not served from the prefix cache"


@pytest.mark.parametrize("name", ["vanilla", "kv", "pc", "lf", "lf-sparse"])
def test_vllm_greedy_tokens_equal_the_hf_engine(reference, name):
    _check(reference, name)


@pytest.mark.parametrize("name", ["lf", "kv"])
def test_image_spans_split_across_prefill_chunks(reference, name):
    _check(reference, name, max_num_batched_tokens=48)


def test_the_references_differ_between_variants(reference):
    # so that serving an adapter as another variant (or ignoring it) cannot pass
    outs = reference["outputs"]
    for name in ("kv", "pc", "lf", "lf-sparse"):
        assert outs[name] != outs["vanilla"], name
    assert outs["lf"] != outs["lf-sparse"]


def test_a_mismatched_adapter_is_refused_before_vllm_starts(reference, tmp_path):
    from dpvr.serve import llm_kwargs

    bad = tmp_path / "other-base"
    shutil.copytree(reference["root"] / "adapters" / "lf", bad)
    meta = json.loads((bad / "dpvr_config.json").read_text())
    meta["base_model"]["fingerprint"]["checksum"] = "0" * 64
    (bad / "dpvr_config.json").write_text(json.dumps(meta))
    from dpvr.adapter import rehash_adapter

    rehash_adapter(bad)  # signed on purpose: the base-fingerprint check, not the integrity check, must refuse it
    with pytest.raises(ValueError, match=r"was made for a different base model .*checksum: adapter has '0000"):
        llm_kwargs(reference["checkpoint"], bad)


def test_the_plugin_entry_point_registers_the_model():
    from importlib.metadata import entry_points

    from vllm import ModelRegistry

    eps = {ep.name: ep for ep in entry_points(group="vllm.general_plugins")}
    assert "dpvr" in eps, sorted(eps)
    eps["dpvr"].load()()
    assert "DPVRLlavaForConditionalGeneration" in ModelRegistry.get_supported_archs()


def test_the_plugin_does_not_import_the_hf_engine():
    code = "import sys, dpvr.serve.model; print(sorted(m for m in sys.modules if m in ('dpvr.engine', 'dpvr.model')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_openai_chat_completion_with_a_base64_image_answers_as_dpvr_eval(reference, tmp_path):
    from openai import OpenAI

    dpvr_bin = Path(sys.executable).parent / "dpvr"
    port = _free_port()
    log = (tmp_path / "server.log").open("w")
    env = os.environ | {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    server = subprocess.Popen(
        [str(dpvr_bin), "serve", "--model", reference["checkpoint"], "--adapter", str(reference["root"] / "adapters" / "lf"),
         "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "512", "--dtype", "float32",
         "--enforce-eager"], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 600  # a cold start on 2 busy cores has taken 3 minutes
        while True:
            assert server.poll() is None, "dpvr serve exited: " + (tmp_path / "server.log").read_text()[-3000:]
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "server not up after 600 s: " + (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(2)
        prompt = reference["prompts"][0]
        png = (Path(reference["checkpoint"]) / "examples" / prompt["image"]).read_bytes()
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        reply = client.chat.completions.create(
            model=client.models.list().data[0].id, temperature=0, max_tokens=reference["max_new_tokens"],
            messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()}},
                {"type": "text", "text": prompt["question"]}]}])
        assert reply.usage.prompt_tokens == len(prompt["prompt_token_ids"])
        assert reply.choices[0].message.content.strip() == reference["answers"]["lf"].strip()
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_dpvr_serve_refuses_a_mismatched_adapter_before_starting(reference, tmp_path):
    bad = tmp_path / "other-base"
    shutil.copytree(reference["root"] / "adapters" / "kv", bad)
    meta = json.loads((bad / "dpvr_config.json").read_text())
    meta["base_model"]["fingerprint"]["num_hidden_layers"] = 32
    (bad / "dpvr_config.json").write_text(json.dumps(meta))
    from dpvr.adapter import rehash_adapter

    rehash_adapter(bad)  # signed on purpose: the base-fingerprint check, not the integrity check, must refuse it
    dpvr_bin = Path(sys.executable).parent / "dpvr"
    out = subprocess.run([str(dpvr_bin), "serve", "--model", reference["checkpoint"], "--adapter", str(bad), "--port", "1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "was made for a different base model" in out.stderr and "num_hidden_layers: adapter has 32" in out.stderr
    assert "Traceback" not in out.stderr


def test_bench_serve_reports_both_methods_and_their_ratios(tmp_path):
    from dpvr.cli import main

    shape = {"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava", "image_token_index": 500,
             "pad_token_id": 501, "projector_hidden_act": "gelu", "tie_word_embeddings": False,
             "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
             "text_config": {"model_type": "llama", "vocab_size": 512, "hidden_size": 128, "intermediate_size": 256,
                             "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4,
                             "max_position_embeddings": 1024, "tie_word_embeddings": False, "bos_token_id": 1,
                             "eos_token_id": 2, "pad_token_id": 501},
             "vision_config": {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                               "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 64, "patch_size": 8,
                               "projection_dim": 32}}
    (tmp_path / "shape.json").write_text(json.dumps(shape))
    out = tmp_path / "bench"
    assert main(["bench", "serve", "--config", str(tmp_path / "shape.json"), "--methods", "lf", "--split", "2",
                 "--num-prompts", "2", "--max-tokens", "2", "--ttft-requests", "1", "--text-tokens", "8",
                 "--warmup", "0", "--repeats", "2", "--out", str(out)]) == 0
    report = json.loads((out / "serve.json").read_text())
    assert sorted(report["methods"]) == ["lf", "vanilla"]
    assert report["methods"]["lf"]["prompt_tokens"] == 32 + 64 + 8  # system words, (64 / 8)**2 image tokens, text
    for r in report["methods"].values():
        assert r["requests_per_s"] > 0 and r["ttft_s"] > 0
    assert report["methods"]["vanilla"]["ratio_vs_vanilla"] == {"ttft_s": 1.0, "requests_per_s": 1.0,
                                                                 "output_tokens_per_s": 1.0}
    lf = report["methods"]["lf"]
    assert len(lf["rounds"]) == 2  # interleaved timed rounds, each with its own figures
    per_round = sorted(r["ttft_s"] / v["ttft_s"] for r, v in zip(lf["rounds"], report["methods"]["vanilla"]["rounds"]))
    assert lf["ratio_vs_vanilla"]["ttft_s"] == pytest.approx(sum(per_round) / 2)  # median of the paired ratios
    lo, hi = lf["ratio_vs_vanilla_p25_p75"]["ttft_s"]
    assert per_round[0] <= lo <= hi <= per_round[1]
    assert report["noise"]["noisy"] and any("2 timed round" in r for r in report["noise"]["reasons"])
