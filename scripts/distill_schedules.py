"""python scripts/distill_schedules.py  (writes /tmp/d_sched/: one run per schedule, then schedules.json)

Warm-up / schedule choice for the side branch: held-out loss after 60 steps of LF at s=5 (seed 0, batch 8)."""
import json
from dpvr.train import TrainArgs, train
res = {}
for name, kw in [("cosine-wu0.03", dict()), ("cosine-wu0.1", dict(warmup_ratio=0.1)),
                 ("constant_with_warmup-wu0.03", dict(lr_scheduler="constant_with_warmup")),
                 ("linear-wu0.03", dict(lr_scheduler="linear"))]:
    s = train(TrainArgs(out=f"/tmp/d_sched/{name}", split=5, max_steps=60, batch_size=8, logging_steps=5,
                        eval_samples=64, max_samples=2000, progress=False, seed=0, **kw))
    res[name] = {"eval_loss_before": s["eval_loss_before"], "eval_loss_after": s["eval_loss_after"]}
    print(name, res[name], flush=True)
json.dump(res, open("/tmp/d_sched/schedules.json", "w"), indent=1)
