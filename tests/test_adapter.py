"""Adapters: save -> load gives identical outputs, holds exactly the side-branch keys, refuses another base."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import dpvr
from dpvr.adapter import CONFIG_NAME, WEIGHTS_NAME
from conftest import make_tiny_llava, num_image_tokens, random_pixels, sample_ids


def trained_like(base, **kw):
    model = dpvr.get_dpvr_model(base, dpvr.DPVRConfig(variant="lf", split=3, **kw))
    with torch.no_grad():  # move the side branch away from its copy-initialisation
        for p in model.side_branch.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model


def test_save_load_gives_identical_logits_and_exact_keys(tmp_path):
    base = make_tiny_llava()
    model = trained_like(base, side_depth=2)
    ids = torch.tensor([sample_ids(1, num_image_tokens(base))])
    pix = random_pixels(1, base)
    before = model(input_ids=ids, pixel_values=pix).logits
    model.save_pretrained(tmp_path / "adapter")

    saved = load_file(str(tmp_path / "adapter" / WEIGHTS_NAME))
    expected = {f"side_branch.{k}" for k in model.side_branch.state_dict()}
    assert set(saved) == expected
    assert all(k.startswith("side_branch.layers.") for k in saved)
    meta = json.loads((tmp_path / "adapter" / CONFIG_NAME).read_text())
    assert meta["dpvr_config"]["side_depth"] == 2 and meta["base_model"]["fingerprint"]["num_hidden_layers"] == 6

    loaded = dpvr.DPVRModel.from_pretrained(make_tiny_llava(), tmp_path / "adapter")  # a fresh copy of the same base
    assert torch.equal(loaded(input_ids=ids, pixel_values=pix).logits, before)
    assert sorted(p.name for p in (tmp_path).iterdir()) == ["adapter"]  # no temp folders left


def test_overwriting_an_adapter_replaces_it_whole(tmp_path):
    base = make_tiny_llava()
    trained_like(base).save_pretrained(tmp_path / "a")
    second = trained_like(base)
    second.save_pretrained(tmp_path / "a")
    loaded = dpvr.DPVRModel.from_pretrained(base, tmp_path / "a")
    for p, q in zip(loaded.side_branch.parameters(), second.side_branch.parameters()):
        assert torch.equal(p, q)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_adapter_for_another_base_is_refused(tmp_path):
    trained_like(make_tiny_llava(seed=0)).save_pretrained(tmp_path / "a")
    with pytest.raises(ValueError, match="different base model.*checksum"):
        dpvr.DPVRModel.from_pretrained(make_tiny_llava(seed=1), tmp_path / "a")
    with pytest.raises(ValueError, match="num_hidden_layers"):
        dpvr.DPVRModel.from_pretrained(make_tiny_llava(num_layers=8), tmp_path / "a")


def test_missing_or_corrupt_adapter_files_are_clear_errors(tmp_path):
    base = make_tiny_llava()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        dpvr.DPVRModel.from_pretrained(base, tmp_path / "nowhere")
    trained_like(base).save_pretrained(tmp_path / "a")
    (tmp_path / "a" / WEIGHTS_NAME).write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="corrupt"):
        dpvr.DPVRModel.from_pretrained(base, tmp_path / "a")
    (tmp_path / "a" / CONFIG_NAME).write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        dpvr.DPVRModel.from_pretrained(base, tmp_path / "a")
    (tmp_path / "a" / CONFIG_NAME).unlink()
    with pytest.raises(FileNotFoundError, match="not a dpvr adapter"):
        dpvr.DPVRModel.from_pretrained(base, tmp_path / "a")


def test_fingerprint_ignores_dtype_of_the_same_checkpoint(tmp_path):
    base = make_tiny_llava()
    trained_like(base).save_pretrained(tmp_path / "a")
    loaded = dpvr.DPVRModel.from_pretrained(make_tiny_llava().to(torch.bfloat16), tmp_path / "a")
    assert next(loaded.side_branch.parameters()).dtype == torch.bfloat16
