"""How ``dpvr train`` was launched, checked before any work: launches accelerate cannot honour are refused.

``accelerate launch`` with an FSDP config (``configs/accelerate/fsdp.yaml``) tells each process through
``ACCELERATE_USE_FSDP``. accelerate 1.15 builds FSDP only on an accelerator device: on a CPU-only machine its
plugin fails with a traceback in every process ("There are currently no available devices found ...", from
``fsdp_sync_module_states``), and without that option its state keeps the launch as MULTI_CPU, so the
processes silently train plain DDP. Either way the user would not get what the config asks for.
(torch's own FSDP2 does shard on CPU over gloo — tests/test_fsdp_cpu.py — but not through accelerate.)
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

FSDP_NEEDS_GPUS = ("FSDP through accelerate needs GPUs (accelerate 1.15 runs FSDP only on CUDA/XPU/NPU-type devices; "
                   "on CPU it fails or silently trains plain DDP): on this machine launch with "
                   "--config_file configs/accelerate/ddp.yaml (2 CPU processes, gloo), or run the FSDP config on GPUs")


def _flag(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() in ("1", "true", "yes", "y", "on")  # accelerate's str_to_bool


def check_launch(environ: Mapping[str, str] | None = None, has_accelerator: bool | None = None) -> None:
    """Raise ValueError (one line) for a launch that cannot run as configured on this machine."""
    environ = os.environ if environ is None else environ
    if has_accelerator is None:
        has_accelerator = torch.accelerator.is_available()
    if _flag(environ, "ACCELERATE_USE_FSDP") and not has_accelerator:
        raise ValueError(FSDP_NEEDS_GPUS)
