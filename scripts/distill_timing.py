"""Per-step training cost of `--distill` against plain LF, in one process (issue 23).

    python scripts/distill_timing.py --out runs/distill-timing --rounds 2

Each round trains, one after the other with the same settings (embedded default, s=6, 20 steps,
batch 8, the first 400 records): plain LF, LF + distillation with the live teacher, LF +
distillation reading cached targets. The first cached run of the process builds the cache (its
run time minus a later cached run's is the cache pass over the 400 records). Writes OUT/timing.json.
On a shared CPU, compare runs of the same round only.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dpvr.train import TrainArgs, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/distill-timing")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    a = p.parse_args()
    out = Path(a.out)
    kw = dict(split=6, max_steps=a.steps, batch_size=8, logging_steps=5, eval_samples=8, progress=False, seed=0,
              max_samples=400)
    res: dict = {}
    for rnd in range(a.rounds):
        for name, extra in [("plain", {}), ("distill_live", dict(distill=True)),
                            ("distill_cached", dict(distill=True, distill_cache=str(out / "cache")))]:
            start = time.perf_counter()
            s = train(TrainArgs(out=str(out / f"{name}-{rnd}"), **kw, **extra))
            res.setdefault(name, []).append({"seconds_per_step": s["wall_seconds"] / s["global_steps"],
                                             "run_seconds": time.perf_counter() - start})
            print(name, rnd, res[name][-1], flush=True)
    (out / "timing.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
