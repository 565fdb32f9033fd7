"""``dpvr demo``: analysis -> training -> evaluation -> efficiency -> report.html, on the embedded default."""

from __future__ import annotations

from dpvr.cli.help import ListAction, hidden_alias


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole study on the embedded tiny LLaVA, ending in report.html",
        description=(
            "Runs the saturation analysis (suggested split), trains DPVR-LF at that split plus DPVR-PC, DPVR-KV and "
            "a LoRA baseline, evaluates them with vanilla, FastV, VTW and LF+FastV (and vanilla with blank images), "
            "measures analytic FLOPs and latency, and writes OUT/report.html (self-contained) and OUT/report.json. "
            "Finished stages are reused when rerun with the same settings. No GPU, no downloads."
        ),
        epilog=("The demo prints its stages with an estimate for this machine before it starts, a progress bar "
                "per stage, and the measured time of each stage (also in OUT/report.json). Ctrl-C stops it; "
                "rerunning the same command reuses the finished stages and resumes an interrupted training "
                "from its last checkpoint."),
    )
    p.add_argument("--out", default="runs/demo", help="output folder")
    p.add_argument("--quick", action="store_true",
                   help="a smoke-test version: few samples, few steps, one latency round; its numbers are marked "
                        "as smoke-test numbers in the report")
    p.add_argument("--model", help="LLaVA model folder (default: the embedded tiny LLaVA)")
    p.add_argument("--data", help="LLaVA conversation JSON (default: the embedded train.json)")
    p.add_argument("--benchmark", help="benchmark folder (default: the embedded benchmark, or --data's folder)")
    p.add_argument("--train-steps", type=int, help="training steps per method (default: 300, quick 6)")
    p.add_argument("--limit", type=int, help="questions per benchmark family (default: 100, quick 6)")
    hidden_alias(p, "--eval-limit", "limit", type=int)
    p.add_argument("--families", action=ListAction, metavar="FAMILY",
                   help="benchmark families to evaluate, space- or comma-separated (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed for training and evaluation")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--inject-load", type=int, default=0, metavar="N",
                   help="run N busy threads during the latency measurement, to check that the report flags noisy "
                        "latency ratios (the efficiency stage is redone; the other stages are reused)")
    hidden_alias(p, "--no-progress", "quiet", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from dpvr.cli import UserError
    from dpvr.demo import DemoSettings, run_demo
    from dpvr.demo.stages import StageError

    if args.inject_load < 0:
        raise UserError(f"--inject-load must be >= 0, got {args.inject_load}")
    for name in ("train_steps", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    overrides = {k: v for k, v in {"train_steps": args.train_steps, "eval_limit": args.limit}.items() if v is not None}
    settings = DemoSettings.for_mode(args.quick, out=args.out, model=args.model, data=args.data,
                                     benchmark=args.benchmark, seed=args.seed, families=args.families,
                                     progress=not args.quiet, inject_load=args.inject_load, **overrides)
    try:
        report = run_demo(settings)
    except StageError as err:
        raise UserError(f"{err} (finished stages are kept; fix the cause and rerun)") from err
    print(f"\nsplit s={report['context']['split']}; report: {settings.out}/report.html")
    for r in report["methods"]:
        saving = "–" if r["flops_saving"] is None else f"{100 * r['flops_saving']:.1f} %"
        print(f"  {r['method']:<28} overall {r['overall']:5.1f}   FLOPs saving {saving}")
    return 0
