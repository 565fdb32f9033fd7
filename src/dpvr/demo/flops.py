"""Analytic FLOPs of the demo's methods at one shape (from `dpvr.efficiency.plan`)."""

from __future__ import annotations

from dpvr.config import DPVRConfig
from dpvr.efficiency.flops import ShapeDims
from dpvr.efficiency.plan import compare_configs


def demo_configs(num_layers: int, split: int, fastv_k: int) -> dict[str, DPVRConfig]:
    """The demo's method set as configs, labelled as in its evaluation table."""
    late = min(num_layers - 1, split + max(1, (num_layers - split) // 2))
    return {
        "vanilla": DPVRConfig(variant="vanilla"),
        "lf": DPVRConfig(variant="lf", split=split),
        "pc": DPVRConfig(variant="pc", split=split),
        "kv": DPVRConfig(variant="kv", split=split),
        "lora16": DPVRConfig(variant="vanilla"),  # LoRA merges into the same layers: vanilla's cost
        "fastv-50": DPVRConfig(variant="fastv", fastv_k=fastv_k, fastv_ratio=0.5),
        "fastv-25": DPVRConfig(variant="fastv", fastv_k=fastv_k, fastv_ratio=0.25),
        f"vtw@{split}": DPVRConfig(variant="vtw", split=split),
        f"vtw@{late}": DPVRConfig(variant="vtw", split=late),
        "lf+fastv-50": DPVRConfig(variant="lf", split=split, fastv_k=fastv_k, fastv_ratio=0.5),
    }


def analytic_table(llava_config, split: int, fastv_k: int, system_tokens: int, text_tokens: int) -> dict:
    dims = ShapeDims.from_config(llava_config)
    rows = compare_configs(dims, demo_configs(dims.num_layers, split, fastv_k), system_tokens, text_tokens)
    return {"shape": dims.name, "num_layers": dims.num_layers, "split": split, "rows": rows}
