"""Analytic cost of any DPVRConfig (efficiency/plan.py) agrees with the per-method schedules and the SPEC."""

from __future__ import annotations

import pytest

from dpvr.config import DPVRConfig
from dpvr.efficiency.flops import ShapeDims, layer_flops
from dpvr.efficiency.methods import Method, prompt_mask, schedule
from dpvr.efficiency.plan import compare_configs, plan_schedule
from dpvr.shapes import load_shape_config


def _cost(dims, sched):
    return sum(layer_flops(w, dims) for w in sched.layers) + sum(layer_flops(w, dims) for w in sched.side)


@pytest.fixture(scope="module")
def dims():
    return ShapeDims.from_config(load_shape_config("llava-1.5-7b"))


@pytest.mark.parametrize("method, config", [
    (Method("vanilla", DPVRConfig(variant="vanilla")), DPVRConfig(variant="vanilla")),
    (Method("lf", DPVRConfig(variant="lf", split=18)), DPVRConfig(variant="lf", split=18)),
    (Method("kv", DPVRConfig(variant="kv", split=18)), DPVRConfig(variant="kv", split=18)),
    (Method("pc", DPVRConfig(variant="pc", split=18)), DPVRConfig(variant="pc", split=18)),
    (Method("fastv", options={"k": 2, "ratio": 0.5}), DPVRConfig(variant="fastv", fastv_k=2, fastv_ratio=0.5)),
    (Method("vtw", options={"k": 18}), DPVRConfig(variant="vtw", split=18)),
])
def test_plan_schedule_matches_method_schedule(dims, method, config):
    is_image = prompt_mask(35, dims.image_tokens, 128)
    assert _cost(dims, plan_schedule(config.resolve(dims.num_layers), is_image)) == \
        _cost(dims, schedule(method, is_image, dims.num_layers))


def test_reference_saving_and_composition(dims):
    rows = compare_configs(dims, {
        "vanilla": DPVRConfig(variant="vanilla"),
        "lf": DPVRConfig(variant="lf", split=18),
        "fastv": DPVRConfig(variant="fastv", fastv_k=2, fastv_ratio=0.5),
        "lf+fastv": DPVRConfig(variant="lf", split=18, fastv_k=2, fastv_ratio=0.5),
    }, system_tokens=35, text_tokens=128)
    saving = {r["method"]: r["lm_saving"] for r in rows}
    assert saving["vanilla"] == 0
    assert saving["lf"] == pytest.approx(0.29, abs=0.01)  # SPEC §9: about 29 % at 128 text tokens
    assert saving["lf+fastv"] > max(saving["lf"], saving["fastv"])
