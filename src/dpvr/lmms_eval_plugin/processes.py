"""Data-parallel process setup for the lmms-eval plugin: rank, world size and a working process group.

Under ``accelerate launch -m lmms_eval`` lmms-eval shards the documents by the launcher's ``RANK`` /
``WORLD_SIZE``, pads the ranks to equal request counts with ``lm.accelerator.gather`` and merges every
rank's samples on rank 0 with ``torch.distributed`` collectives. lmms-eval's ``__main__`` creates the
first ``Accelerator()`` itself, before it builds the model. On a machine without GPUs and a launch
config that does not say ``use_cpu`` (e.g. ``configs/accelerate/ddp.yaml``, which the same command uses
on GPUs), that ``Accelerator`` finds no device backend: it starts torch's default process group but
records "not distributed" (``DistributedType.NO``, one process), so the model reports rank 0 of 1 on
every process and ``accelerator.gather`` / ``wait_for_everyone`` do nothing. Stock lmms-eval models
assume CUDA there.

:func:`setup_processes` repairs exactly that case: when the launcher started several processes and
accelerate's shared state says "not distributed", it rebuilds that state for the CPU (``gloo``,
adopting the process group already started), so lmms-eval's own ``Accelerator`` (its state is shared)
and the model agree on rank and world size. With a GPU per process, or a CPU launch (``--cpu``),
accelerate's state is already right and is kept.
"""

from __future__ import annotations

import os


def launched_world_size() -> int:
    """Processes the launcher started (``WORLD_SIZE``; 1 outside a launcher)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def setup_processes():
    """An ``Accelerator`` whose process group spans every launched process (see the module docstring)."""
    import torch.distributed as dist
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, DistributedType

    accelerator = Accelerator()
    world = launched_world_size()
    if world > 1 and accelerator.distributed_type == DistributedType.NO and dist.is_available():
        # Shared (Borg) state: clearing and rebuilding it updates every Accelerator already made, lmms-eval's too.
        AcceleratorState._reset_state(reset_partial_state=True)
        accelerator = Accelerator(cpu=True)
    if world > 1 and accelerator.num_processes != world:
        raise RuntimeError(f"the launcher started {world} processes but accelerate sees {accelerator.num_processes} "
                           f"(distributed type {accelerator.distributed_type}): launch with `accelerate launch "
                           "--num_processes N -m lmms_eval ...` (add --cpu on a machine without GPUs)")
    return accelerator
