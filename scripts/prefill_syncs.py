#!/usr/bin/env python3
"""Usage: python scripts/prefill_syncs.py vanilla lf kv   (tiny shape, CPU, seconds)

Where the host waits (a device sync on GPU) on the device in a prefill: _local_scalar_dense (item/bool/int) and H2D tensor creation, by position among the pass's matmuls."""
import sys, torch
from torch.utils._python_dispatch import TorchDispatchMode
import dpvr
from dpvr.efficiency.latency import build_random_model, make_inputs
from dpvr.shapes import load_shape_config
cfg = load_shape_config("tiny")
base = build_random_model(cfg)
inp = make_inputs(cfg, 1, 35, 128, 1, torch.float32, torch.device("cpu"))
class Log(TorchDispatchMode):
    def __init__(self): super().__init__(); self.ops = []; self.mm = 0; self.syncs = []; self.n = 0
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket.__name__)
        self.n += 1
        if name in ("mm", "addmm", "bmm"): self.mm += 1
        if name == "_local_scalar_dense": self.syncs.append(self.mm)
        return func(*args, **(kwargs or {}))
for variant in sys.argv[1:]:
    m = base if variant == "vanilla" else dpvr.get_dpvr_model(base, dpvr.DPVRConfig(variant=variant, split=3))
    with torch.no_grad(), Log() as log:
        m(input_ids=inp["input_ids"], pixel_values=inp["pixel_values"], attention_mask=inp["attention_mask"], use_cache=True, logits_to_keep=1)
    print(f"{variant}: {log.n} aten ops, {log.mm} matmuls; host syncs after matmul #: {log.syncs}")
