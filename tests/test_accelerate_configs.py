"""The shipped ``configs/accelerate/*.yaml`` as ``accelerate launch`` reads them, on a machine without a GPU.

Each file goes through accelerate's own launcher code (``_validate_launch_command``: unknown keys and bad
values are refused there), then through the environment the launcher would hand to the training processes
(``prepare_deepspeed_cmd_env`` / ``prepare_multi_gpu_env``), from which the plugin that ``Accelerator``
builds in each process is built here: ``DeepSpeedPlugin`` (its DeepSpeed JSON config) and
``FullyShardedDataParallelPlugin``. Where ``deepspeed`` is importable (it is not a dependency: PyPI has only
its source, built against the installed torch), its own schema checks the ZeRO section too.

Not covered here: DDP trains to the one-process adapter (tests/test_train.py). FSDP cannot be run on CPU
with accelerate 1.15: its plugin needs a device for ``fsdp_sync_module_states`` ("There are currently no
available devices found, must be one of 'XPU', 'CUDA', ..."), and without that option accelerate's state
keeps a CPU launch as MULTI_CPU, so the processes train under DDP, not FSDP (accelerate/state.py only
switches GPU-type launches to FSDP): an FSDP run through accelerate needs at least two CUDA devices, so
``dpvr train`` refuses that launch on a CPU-only machine in one line (below). torch's own FSDP2 does shard
dpvr's side branch over 2 CPU processes and trains the 1-process adapter (tests/test_fsdp_cpu.py).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import yaml

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"


def launch_env(config: Path) -> tuple[object, dict[str, str]]:
    """(parsed launch arguments, the environment variables the launcher adds for the training processes)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config), "-m", "dpvr", "train"])
    args, defaults, mp_from_config = _validate_launch_command(args)
    if args.use_deepspeed:  # as accelerate's launch_command does before its deepspeed launcher
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    return args, {k: v for k, v in env.items() if os.environ.get(k) != v}


def test_every_shipped_config_is_covered():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == ["ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp"]


@pytest.mark.parametrize("name", ["deepspeed_zero2", "deepspeed_zero3"])
def test_deepspeed_config_builds_the_plugin_it_describes(name, monkeypatch):
    from accelerate.utils import DeepSpeedPlugin

    raw = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    args, env = launch_env(CONFIGS / f"{name}.yaml")
    assert args.use_deepspeed and not args.use_fsdp and env["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert env["ACCELERATE_MIXED_PRECISION"] == raw["mixed_precision"] == "bf16"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    ds = DeepSpeedPlugin().deepspeed_config  # what each training process's Accelerator builds
    stage = raw["deepspeed_config"]["zero_stage"]
    zero = ds["zero_optimization"]
    assert zero["stage"] == stage == int(name[-1])
    assert zero["offload_optimizer"]["device"] == zero["offload_param"]["device"] == "none"
    assert zero["stage3_gather_16bit_weights_on_model_save"] is (stage == 3)  # a ZeRO-3 adapter is saved whole
    assert ds["gradient_clipping"] == raw["deepspeed_config"]["gradient_clipping"]
    assert ds["gradient_accumulation_steps"] == 1
    if stage == 3:
        assert env["ACCELERATE_DEEPSPEED_ZERO3_INIT"] == "false"  # the base is loaded whole, then wrapped
    if importlib.util.find_spec("deepspeed") is not None:
        monkeypatch.setenv("DS_ACCELERATOR", os.environ.get("DS_ACCELERATOR", "cpu"))
        from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

        assert DeepSpeedZeroConfig(**zero).stage == stage


def test_fsdp_config_builds_the_plugin_it_describes_and_wraps_the_models_layers(monkeypatch, tiny_llava):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import ShardingStrategy, StateDictType

    from dpvr import DPVRConfig, get_dpvr_model

    args, env = launch_env(CONFIGS / "fsdp.yaml")
    assert args.use_fsdp and not args.use_deepspeed and env["ACCELERATE_USE_FSDP"] == "true"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert env["FSDP_SYNC_MODULE_STATES"] == "true"
    monkeypatch.setenv("FSDP_SYNC_MODULE_STATES", "false")  # the one setting that needs a GPU to be built
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.sharding_strategy == ShardingStrategy.FULL_SHARD
    assert plugin.state_dict_type == StateDictType.FULL_STATE_DICT  # rank 0 saves the whole side branch
    assert plugin.use_orig_params  # frozen backbone and trainable side branch share wrapped modules
    # every class named for wrapping is a layer class of a DPVR model (accelerate refuses a name it cannot find)
    model = get_dpvr_model(tiny_llava, DPVRConfig(variant="lf", split=3))
    present = {type(m).__name__ for m in model.modules()}
    assert plugin.transformer_cls_names_to_wrap and set(plugin.transformer_cls_names_to_wrap) <= present


def test_ddp_config_is_a_two_process_launch():
    args, env = launch_env(CONFIGS / "ddp.yaml")
    assert args.multi_gpu and not (args.use_fsdp or args.use_deepspeed)
    assert args.num_processes == 2 and env["ACCELERATE_MIXED_PRECISION"] == "no"


def test_a_misspelt_key_is_refused_by_accelerate(tmp_path):
    """The validation above is accelerate's own: a config with a typo does not load."""
    bad = tmp_path / "bad.yaml"
    bad.write_text((CONFIGS / "deepspeed_zero2.yaml").read_text().replace("num_machines", "num_machine"))
    with pytest.raises(ValueError, match="num_machine"):
        launch_env(bad)


def test_fsdp_launch_without_a_gpu_is_refused_in_one_line(monkeypatch, tmp_path, capsys):
    """`accelerate launch --config_file fsdp.yaml -m dpvr train` on a CPU-only machine: each process gets
    the environment below and stops before any work with one line naming the way out (ddp.yaml)."""
    import torch

    from dpvr.cli import main

    _, env = launch_env(CONFIGS / "fsdp.yaml")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    out = tmp_path / "never"
    rc = main(["train", "--out", str(out), "--model", str(tmp_path / "no-model"), "--data", str(tmp_path / "x.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 2 and "Traceback" not in "\n".join(err)
    assert err[0].startswith("dpvr train: error: FSDP through accelerate needs GPUs") and "ddp.yaml" in err[0]
    assert not out.exists()


def test_the_launch_check_refuses_fsdp_only_without_an_accelerator():
    from dpvr.train.launch import check_launch

    for value in ("true", "1", "True"):
        with pytest.raises(ValueError, match="FSDP through accelerate needs GPUs"):
            check_launch({"ACCELERATE_USE_FSDP": value}, has_accelerator=False)
    check_launch({"ACCELERATE_USE_FSDP": "true"}, has_accelerator=True)  # GPUs: accelerate's FSDP runs
    check_launch({"ACCELERATE_USE_FSDP": "false"}, has_accelerator=False)
    check_launch({"ACCELERATE_USE_DEEPSPEED": "true"}, has_accelerator=False)  # not this check's concern
    check_launch({}, has_accelerator=False)  # a plain or DDP launch
