"""Fault injection: every writing command killed (SIGKILL) at seeded random moments and at each commit step,
or failing at each commit step; the output is always the previous complete one or the new complete one,
and a rerun ends with the same bytes as an uninterrupted run.

Each run is a forked child of the test process (libraries already imported, so a run takes about a second)
and is killed by its PID. The folder starts as a complete output of an *older* run (other settings) so that
"old" and "new" differ. Totals are printed (``-s``) and checked: kills tried, outputs checked, losses (0).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from dpvr import io as dio

TIMING_KEYS = {"resume", "wall_seconds", "steps_per_second", "seconds", "questions_per_second", "wall_time_s", "timings_s",
               "command"}
COUNTS = {"kills": 0, "kills_landed": 0, "commit_kills": 0, "commit_failures": 0, "checked": 0, "losses": 0}


def _scrub(value, out: str):
    if isinstance(value, dict):
        return {k: _scrub(v, out) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [_scrub(v, out) for v in value]
    if isinstance(value, str):
        return value.replace(out, "<out>")
    return value


def snapshot(out: Path, entries: list[str] | None) -> dict:
    """relative path -> digest of the output (timings and the folder's own path scrubbed from JSON)."""
    if not out.exists():
        return {}
    files = {}
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if not path.is_file() or any(part.startswith(".") for part in Path(rel).parts) or rel.startswith("checkpoints/"):
            continue
        if entries is not None and rel.split("/")[0] not in entries:
            continue
        data = path.read_bytes()
        if path.suffix == ".json":
            data = json.dumps(_scrub(json.loads(data), str(out)), sort_keys=True).encode()
        files[rel] = hashlib.sha256(data).hexdigest()
    return files


def _child(fn, kill_at_rename: int | None = None) -> int:
    """Run ``fn`` in a forked child; with ``kill_at_rename`` k, the child dies (no cleanup) at its k-th rename
    inside a commit. Returns the child's PID (not waited for)."""
    pid = os.fork()
    if pid:
        return pid
    try:  # pragma: no cover - child
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1), os.dup2(devnull, 2)
        if kill_at_rename is not None:
            _arm(lambda: os._exit(137), kill_at_rename)
        fn()
        os._exit(0)
    except BaseException:  # pragma: no cover - child
        os._exit(1)


COMMIT_FUNCTIONS = {"commit_unit", "swap_in", "recover_units"}


def _in_commit() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name in COMMIT_FUNCTIONS and frame.f_globals.get("__name__") == "dpvr.io":
            return True
        frame = frame.f_back
    return False


def _arm(action, k: int) -> dict:
    """Make the k-th rename/replace/exchange done inside a commit (``dpvr.io.commit_unit``/``swap_in``) call
    ``action`` first."""
    state = {"n": 0}
    real = {"rename": os.rename, "replace": os.replace, "exchange": dio.exchange}

    def counted(name):
        def wrapper(*a, **kw):
            if _in_commit():
                state["n"] += 1
                if state["n"] == k:
                    action()
            return real[name](*a, **kw)
        return wrapper

    os.rename, os.replace, dio.exchange = counted("rename"), counted("replace"), counted("exchange")
    state["restore"] = lambda: (setattr(os, "rename", real["rename"]), setattr(os, "replace", real["replace"]),
                                setattr(dio, "exchange", real["exchange"]))
    return state


def _wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


class Case:
    """One writing command: ``run(out, new)`` writes the new (or the old) output into ``out``."""

    def __init__(self, name, run, entries=None, tag=None, sample_steps=None):
        self.name, self.run, self.entries, self.tag, self.sample_steps = name, run, entries, tag, sample_steps

    def prepare(self, root: Path):
        self.old_tree, self.out = root / "old" / self.name, root / self.name
        self.run(self.out, new=False)  # written where the runs go: paths recorded inside are the same
        shutil.copytree(self.out, self.old_tree)
        self.old = snapshot(self.out, self.entries)
        ref = root / "ref" / self.name
        start = time.perf_counter()
        assert _wait(_child(lambda: self.run(ref, new=True))) == 0
        self.seconds = time.perf_counter() - start
        self.new = snapshot(ref, self.entries)
        assert self.old and self.new and self.old != self.new, self.name

    def reset(self):
        shutil.rmtree(self.out, ignore_errors=True)
        shutil.copytree(self.old_tree, self.out)

    def check(self, after_kill: bool):
        """The folder holds the old or the new output; entry by entry if a commit was cut (then the next run's
        recovery must finish it). Returns True when it was a complete unit."""
        got = snapshot(self.out, self.entries)
        COUNTS["checked"] += 1
        if got in (self.old, self.new):
            return True
        whole = {rel: (digest in (self.old.get(rel), self.new.get(rel))) for rel, digest in got.items()}
        mid_commit = after_kill and self.tag and any(p.name.startswith(f".{self.tag}-staging-") and (p / dio.JOURNAL).exists()
                                                    for p in self.out.iterdir())
        if not (mid_commit and all(whole.values()) and set(got) >= set(self.old) & set(self.new)):
            COUNTS["losses"] += 1
            pytest.fail(f"{self.name}: output is neither the old nor the new one: "
                        f"{sorted(r for r, ok in whole.items() if not ok) or sorted(set(self.old) ^ set(got))}")
        return False

    def rerun_matches(self):
        assert _wait(_child(lambda: self.run(self.out, new=True))) == 0, f"{self.name}: rerun failed"
        got = snapshot(self.out, self.entries)
        if got != self.new:
            COUNTS["losses"] += 1
            diff = sorted(r for r in set(got) | set(self.new) if got.get(r) != self.new.get(r))
            pytest.fail(f"{self.name}: the rerun differs from an uninterrupted run in {diff}")
        leftovers = [p.name for p in self.out.iterdir() if "-staging-" in p.name or ".tmp-" in p.name or ".old-" in p.name]
        leftovers += [p.name for p in self.out.parent.iterdir() if p.name.startswith(f".{self.name}.") and not p.name.endswith(".lock")]
        assert not leftovers, f"{self.name}: leftovers after a successful rerun: {leftovers}"


def _cases(tiny_dir: Path):
    from dpvr.analysis.saturate import run_analysis
    from dpvr.data import generate_dataset
    from dpvr.evaluation import EvalSettings, run_eval
    from dpvr.train import TrainArgs, train
    from dpvr.train.checkpoints import latest_complete

    model, data = str(tiny_dir / "model"), str(tiny_dir / "data" / "train.json")

    def do_train(out, new):
        resume = "latest" if new and latest_complete(Path(out) / "checkpoints") else None
        train(TrainArgs(out=str(out), model=model, data=data, split=2, batch_size=4, max_steps=4 if new else 2,
                        logging_steps=1, eval_samples=4, seed=0 if new else 1, save_steps=2 if new else None,
                        resume=resume, progress=False))

    def do_eval(out, new):
        settings = EvalSettings(benchmark=str(tiny_dir / "data"), families=["pope"], limit=3 if new else 2,
                                max_new_tokens=1, device="cpu", progress=False)
        run_eval(["vanilla", "vtw:k=2"] if new else ["vanilla"], out=out, model=model, settings=settings)

    def do_analyze(out, new):
        run_analysis(model, data, str(tiny_dir / "data"), out, num_samples=2, batch_size=2, seed=0 if new else 1,
                     progress=False)

    def do_generate(out, new):
        generate_dataset(out, seed=0 if new else 1, num_train=12, num_test_per_family=6, overwrite=True, progress=False)

    return {
        "train": Case("train", do_train, ["adapter", "loss.jsonl", "loss.png", "train_args.json", "result.json"],
                      "train", sample_steps=2),
        "eval": Case("eval", do_eval, ["predictions", "results.md", "results.json"], "eval"),
        "analyze": Case("analyze", do_analyze, ["saturation.json", "saturation.png"], "analyze", sample_steps=2),
        "generate": Case("generate", do_generate, None, None),
    }


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # forked children must not inherit a busy thread pool
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    print(f"\nfault injection totals: {COUNTS}")


def _commit_steps(case: Case) -> int:
    """How many renames the commit of an uninterrupted run makes (counted in-process, nothing injected)."""
    case.reset()
    state = _arm(lambda: None, -1)
    try:
        case.run(case.out, new=True)
    finally:
        state["restore"]()
    return state["n"]


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="needs fork (Linux)")
@pytest.mark.parametrize("name", ["eval", "generate", pytest.param("analyze", marks=pytest.mark.slow),
                                  pytest.param("train", marks=pytest.mark.skip(
                                      reason="its forked child deadlocked in a clean-clone CI run (0 % CPU for 8+ min, "
                                             "likely a thread pool inherited through fork): to fix before re-enabling"))])
def test_kills_and_commit_faults_never_lose_an_output(tiny_dir, tmp_path, name):
    """3 SIGKILLs at seeded random moments, a kill at each rename of the commit and a failing rename at each
    (train and analyze: 2 seeded steps of their commit; eval runs the same commit code through every step)."""
    rng = random.Random(f"faults-{name}")
    case = _cases(tiny_dir)[name]
    case.prepare(tmp_path)
    steps = list(range(1, _commit_steps(case) + 1))
    assert steps, f"{name}: no commit step counted"
    if case.sample_steps:
        steps = sorted(rng.sample(steps, case.sample_steps))
    # 1. SIGKILL at seeded random moments of the run
    landed = 0
    for _ in range(3):
        case.reset()
        delay = rng.uniform(0.05, 0.9) * case.seconds
        pid = _child(lambda: case.run(case.out, new=True))
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        landed += _wait(pid) == -signal.SIGKILL
        COUNTS["kills"] += 1
        case.check(after_kill=True)
        case.rerun_matches()
    COUNTS["kills_landed"] += landed
    # 2. killed at a rename of the commit: what is there is old or new entry by entry, and the rerun finishes it
    for k in steps:
        case.reset()
        code = _wait(_child(lambda: case.run(case.out, new=True), kill_at_rename=k))
        assert code == 137, f"{name}: run failed with {code} before commit step {k}"
        COUNTS["commit_kills"] += 1
        case.check(after_kill=True)
        case.rerun_matches()
    # 3. a rename failing (OSError) at a commit step, in-process: rolled back to exactly the old output
    for k in steps:
        case.reset()
        state = _arm(lambda: (_ for _ in ()).throw(OSError(5, "injected")), k)
        try:
            with pytest.raises(OSError, match="injected"):
                case.run(case.out, new=True)
        finally:
            state["restore"]()
        COUNTS["commit_failures"] += 1
        assert case.check(after_kill=False) and snapshot(case.out, case.entries) == case.old, \
            f"{name}: a failed commit at step {k} was not rolled back"
    assert COUNTS["losses"] == 0
