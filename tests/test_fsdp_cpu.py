"""FSDP on CPU: dpvr's side branch trained sharded by torch's own FSDP2 (``fully_shard``) over 2 gloo processes.

accelerate 1.15 cannot run FSDP without a GPU (tests/test_accelerate_configs.py says why), so this drives
torch 2.13's ``torch.distributed.fsdp.fully_shard`` directly: each side-branch layer and the whole model are
sharded over a 2-process CPU mesh, each process trains on its half of a 4-sample batch, and the side branch
it ends with equals a 1-process run on the whole batch. The samples have the same number of label tokens,
so the mean of the two processes' mean losses (FSDP averages the gradients) is the 1-process mean loss.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import IMAGE_TOKEN_ID, make_tiny_llava, num_image_tokens, random_pixels, sample_ids

STEPS = 3
WORLD = 2
BATCH = 4  # global batch; each process gets BATCH // WORLD samples


def _model():
    from dpvr import DPVRConfig, get_dpvr_model

    return get_dpvr_model(make_tiny_llava(seed=0), DPVRConfig(variant="lf", split=3)).train()


def _batch(model) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = num_image_tokens(model)
    ids = torch.tensor([sample_ids(1, n, seed=s) for s in range(BATCH)])  # (BATCH, T), all of one length
    labels = ids.masked_fill(ids == IMAGE_TOKEN_ID, -100)  # the same label-token count in every sample
    return ids, labels, random_pixels(BATCH, model)


def _train(model, ids, labels, pixels) -> None:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(STEPS):
        model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()


def _side_branch(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.side_branch.named_parameters()}


def _worker(rank: int, folder: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor, Shard

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=120))  # a lost peer fails the test, never hangs it
    try:
        mesh = init_device_mesh("cpu", (WORLD,))
        model = _model()
        ids, labels, pixels = _batch(model)
        full = {k: v.numel() for k, v in model.side_branch.named_parameters()}
        for layer in model.side_branch.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)  # the frozen backbone too
        params = dict(model.side_branch.named_parameters())
        assert all(isinstance(p, DTensor) and p.placements == (Shard(0),) for p in params.values())
        local = {k: p.to_local().numel() for k, p in params.items()}  # this process's shard
        half = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        _train(model, ids[half], labels[half], pixels[half])
        weights = {k: p.full_tensor() for k, p in model.side_branch.named_parameters()}  # all-gather
        torch.save({"weights": weights, "full": full, "local": local}, Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_fsdp2_two_cpu_processes_train_the_one_process_side_branch(tmp_path):
    torch.manual_seed(0)
    one = _model()
    initial = _side_branch(one)
    _train(one, *_batch(one))
    expected = _side_branch(one)
    assert max((expected[k] - initial[k]).abs().max() for k in initial) > 1e-3  # training moved the weights

    mp.start_processes(_worker, args=(str(tmp_path),), nprocs=WORLD, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for got in ranks:
        assert got["weights"].keys() == expected.keys()
        for k in expected:
            torch.testing.assert_close(got["weights"][k], expected[k], rtol=1e-4, atol=1e-5)
    # really sharded: every side-branch parameter is split across the processes, none is held whole
    for k, n in ranks[0]["full"].items():
        assert all(r["local"][k] < n for r in ranks), k
        assert sum(r["local"][k] for r in ranks) == n, k
