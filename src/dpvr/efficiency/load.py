"""Deliberate CPU load, for checking that noisy measurements are flagged (``dpvr demo --inject-load N``).

`inject_load(n)` runs ``n`` threads of single-threaded matrix products inside this process while the
block runs. They compete with the measured work for the cores and, since a CPU-time clock counts
every thread of the process, disturb both wall-clock and CPU-time timings: the rounds disagree and
`dpvr.efficiency.noise.assess` reports the ratios as unreadable. Nothing else uses it.
"""

from __future__ import annotations

import contextlib
import threading


@contextlib.contextmanager
def inject_load(n: int, size: int = 192):
    if n <= 0:
        yield
        return
    import torch

    stop = threading.Event()

    def spin(seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        a, b = torch.randn(size, size, generator=g), torch.randn(size, size, generator=g)
        k = 0
        while not stop.is_set():
            a = torch.mm(a, b).tanh_()  # torch releases the GIL inside the product
            k += 1
            if k % 7 == seed % 7:  # bursts, not a steady share: the rounds differ from each other
                stop.wait(0.002 * (1 + seed % 3))

    threads = [threading.Thread(target=spin, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join()
