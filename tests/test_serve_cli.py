"""``dpvr serve`` and the plugin's adapter reading, in the main venv (no vLLM here: that has its own test).

The plugin computes the base fingerprint from checkpoint files, without the HF engine; it must equal
the engine's, or every adapter would be refused (or a wrong one accepted) when served.
"""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
import torch

from dpvr import DPVRConfig, get_dpvr_model
from dpvr.adapter import base_fingerprint
from dpvr.cli import main
from dpvr.embedded import checkpoint_path
from dpvr.serve import llm_kwargs
from dpvr.serve.adapter import checkpoint_fingerprint, load_serve_adapter


@pytest.fixture(scope="module")
def base():
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(checkpoint_path(), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def adapter(base, tmp_path_factory):
    out = tmp_path_factory.mktemp("serve-adapter") / "lf"
    get_dpvr_model(base, DPVRConfig(variant="lf", split=4)).save_pretrained(out)
    return out


def test_checkpoint_fingerprint_equals_the_engines(base):
    assert checkpoint_fingerprint(checkpoint_path()) == base_fingerprint(base)


def test_the_engines_adapter_loads_for_serving(adapter):
    got = load_serve_adapter(checkpoint_path(), adapter)
    assert got.config.variant == "lf" and got.plan.modes == ["full"] * 4 + ["text"] * 3 + ["fuse"]
    kwargs = llm_kwargs(checkpoint_path(), adapter)
    assert kwargs["hf_overrides"] == {"architectures": ["DPVRLlavaForConditionalGeneration"],
                                      "dpvr_adapter": str(adapter.resolve())}
    assert kwargs["enforce_eager"] is True  # lf's text-only layers: no CUDA graphs
    assert "enforce_eager" not in llm_kwargs(checkpoint_path())  # vanilla keeps vLLM's defaults


def test_a_mismatched_adapter_gets_the_engines_message(base, adapter, tmp_path):
    from dpvr import DPVRModel

    bad = tmp_path / "bad"
    shutil.copytree(adapter, bad)
    meta = json.loads((bad / "dpvr_config.json").read_text())
    meta["base_model"]["fingerprint"]["hidden_size"] = 4096
    (bad / "dpvr_config.json").write_text(json.dumps(meta))
    from dpvr.adapter import rehash_adapter

    rehash_adapter(bad)  # signed on purpose: the fingerprint check, not the integrity check, must refuse it
    with pytest.raises(ValueError) as engine:
        DPVRModel.from_pretrained(base, bad)
    with pytest.raises(ValueError) as served:
        load_serve_adapter(checkpoint_path(), bad)
    assert str(served.value) == str(engine.value)
    assert "hidden_size: adapter has 4096, base has 128" in str(served.value)


def test_unsupported_variants_are_refused(base, tmp_path):
    out = tmp_path / "ideal"
    get_dpvr_model(base, DPVRConfig(variant="ideal", split=4)).save_pretrained(out)
    with pytest.raises(ValueError, match="the vLLM plugin serves vanilla, lf, pc, kv"):
        load_serve_adapter(checkpoint_path(), out)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_serve_without_vllm_says_where_the_serve_venv_is(capsys):
    assert main(["serve", "--model", str(checkpoint_path()), "--port", "8000"]) == 2
    err = capsys.readouterr().err
    assert "vLLM is not installed" in err and "scripts/setup_serve.sh" in err and len(err.strip().splitlines()) == 2


def test_unknown_options_still_fail_for_other_subcommands():
    with pytest.raises(SystemExit):
        main(["bench", "flops", "--no-such-option"])
