"""Bundled model shapes: configs load offline, meta-device models build, parameter counts are exact."""

from __future__ import annotations

import json

import pytest
import torch

from dpvr.config import DPVRConfig
from dpvr.shapes import BUNDLED, build_meta_model, default_split, load_shape_config, parameter_counts


def test_7b_shape_matches_published_values():
    cfg = load_shape_config("llava-1.5-7b")
    t, v = cfg.text_config, cfg.vision_config
    assert (t.vocab_size, t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.num_attention_heads) == (
        32064, 4096, 11008, 32, 32)
    assert (v.hidden_size, v.intermediate_size, v.num_hidden_layers, v.num_attention_heads) == (1024, 4096, 24, 16)
    assert (v.image_size, v.patch_size) == (336, 14)
    assert cfg.image_token_id == 32000
    assert cfg.vision_feature_layer == -2 and cfg.vision_feature_select_strategy == "default"
    assert cfg.projector_hidden_act == "gelu"


def test_13b_shape_matches_published_values():
    t = load_shape_config("llava-1.5-13b").text_config
    assert (t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.num_attention_heads) == (5120, 13824, 40, 40)


def test_7b_meta_model_has_no_storage_and_side_branch_count():
    cfg = load_shape_config("llava-1.5-7b")
    model = build_meta_model(cfg)
    assert all(p.device.type == "meta" for p in model.parameters())
    counts = parameter_counts(cfg, DPVRConfig(variant="lf", split=18, side_depth=1))
    assert counts["side_branch"] == 202_383_360
    assert counts["total"] == 7_063_427_072  # the published ~7.06B of LLaVA-1.5-7B
    assert counts["total"] == counts["vision"] + counts["language_model"]
    assert counts["total_with_side_branch"] == counts["total"] + 202_383_360


def test_side_branch_scales_with_depth_and_vanilla_has_none():
    cfg = load_shape_config("llava-1.5-7b")
    assert parameter_counts(cfg, DPVRConfig(variant="lf", split=18, side_depth=2))["side_branch"] == 2 * 202_383_360
    assert parameter_counts(cfg, DPVRConfig(variant="vanilla"))["side_branch"] == 0


@pytest.mark.parametrize("name", BUNDLED)
def test_every_bundled_shape_loads_with_a_default_split(name):
    cfg = load_shape_config(name)
    assert 1 <= default_split(cfg) < cfg.text_config.num_hidden_layers
    assert cfg.image_token_id < cfg.text_config.vocab_size


def test_tiny_shape_runs_a_real_forward():
    cfg = load_shape_config("tiny")
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg).eval()
    n_img = (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2
    ids = torch.tensor([[1, 5, 6] + [cfg.image_token_id] * n_img + [7, 8]])
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=torch.randn(1, 3, 32, 32))
    assert out.logits.shape == (1, ids.shape[1], cfg.text_config.vocab_size)


def test_config_path_and_directory(tmp_path):
    src = load_shape_config("tiny").to_dict()
    (tmp_path / "config.json").write_text(json.dumps(src))
    assert load_shape_config(tmp_path).text_config.hidden_size == 64
    assert load_shape_config(tmp_path / "config.json").text_config.num_hidden_layers == 4


def test_bad_shapes_are_refused_with_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a bundled shape"):
        load_shape_config("llava-9b")
    bad = tmp_path / "bert.json"
    bad.write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="not a vision-language model config"):
        load_shape_config(bad)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_shape_config(broken)
    custom = tmp_path / "config.json"
    custom.write_text(json.dumps(load_shape_config("tiny").to_dict()))
    with pytest.raises(ValueError, match="no default split"):
        default_split(load_shape_config(custom))
