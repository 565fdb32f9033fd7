"""Fault injection: every writing command killed (SIGKILL) at seeded random moments and at each commit step,
or failing at each commit step; the output is always the previous complete one or the new complete one,
and a rerun ends with the same bytes as an uninterrupted run.

Each run is a child process killed by its PID. The children are forked from a clean ``forkserver`` (one
thread, libraries preloaded, so a run takes about a second), never from the test process: a child killed
while it holds a lock that is shared across ``fork`` leaves that lock held forever for every later fork of
the same parent. tqdm's write lock is such a lock (a ``multiprocessing.RLock``, a POSIX semaphore the kernel
does not release when its holder dies; every progress bar refresh takes it), and a ``train`` rerun forked
from pytest hung on it at 0 % CPU in CI. A child that hangs anyway is stopped after ``RUN_TIMEOUT`` seconds
with its stack in the failure message; it never hangs the suite.

The folder starts as a complete output of an *older* run (other settings) so that "old" and "new" differ.
Totals are printed (``-s``) and checked: kills tried, outputs checked, losses (0).
"""

from __future__ import annotations

import contextlib
import faulthandler
import hashlib
import itertools
import json
import multiprocessing
import os
import random
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch

from dpvr import io as dio

TIMING_KEYS = {"resume", "wall_seconds", "steps_per_second", "seconds", "questions_per_second", "wall_time_s", "timings_s",
               "command", "t"}
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
            value = _scrub(json.loads(data), str(out))
            if isinstance(value, dict) and isinstance(value.get("files"), dict):  # build.json: .jsonl hashes cover timings
                value["files"] = {k: v for k, v in value["files"].items() if not k.endswith(".jsonl")}
            data = json.dumps(value, sort_keys=True).encode()
        elif path.suffix == ".jsonl":
            data = "\n".join(json.dumps(_scrub(json.loads(line), str(out)), sort_keys=True)
                             for line in data.decode().splitlines()).encode()
        files[rel] = hashlib.sha256(data).hexdigest()
    return files


RUN_TIMEOUT = float(os.environ.get("DPVR_FAULT_RUN_TIMEOUT", "300"))  # seconds one child run may take
PRELOAD = ["torch", "transformers", "matplotlib.pyplot", "dpvr.train.run", "dpvr.train.checkpoints", "dpvr.evaluation",
           "dpvr.analysis.saturate", "dpvr.data", "dpvr.tiny.plots", "dpvr.tiny.build", "dpvr.tiny.stages"]
_CTX = multiprocessing.get_context("forkserver")
_LOG_IDS = itertools.count()


def _fork_hazards() -> list[str]:
    """What a forked child would share with the process it came from and must not (empty in a clean server)."""
    from tqdm.std import TqdmDefaultWriteLock

    found = []
    tasks = os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else ["main"]
    if len(tasks) > 1:
        found.append(f"{len(tasks)} threads")
    if hasattr(TqdmDefaultWriteLock, "mp_lock"):
        found.append("tqdm's multiprocessing lock")
    return found


def _child_main(fn, log: str, kill_at_rename: int | None, check_clean: bool) -> None:  # pragma: no cover - child
    """Entry point of a child (forked by the forkserver): output to ``log``, a watchdog, then ``fn()``."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    os.dup2(fd, 1), os.dup2(fd, 2)
    try:
        hazards = _fork_hazards() if check_clean else []
        if hazards:
            print(f"the forkserver is not clean: {', '.join(hazards)} (a kill could leave a lock held)", flush=True)
            os._exit(3)
        # The forkserver made this the child's default start method: semaphores (tqdm's lock) would then be named
        # ones, left for the resource tracker to clean up at exit whenever a child is killed. Unnamed, as under fork.
        multiprocessing.set_start_method("fork", force=True)
        torch.set_num_threads(1)
        faulthandler.dump_traceback_later(RUN_TIMEOUT, exit=True, file=sys.stderr)  # stacks, then exit 1
        if kill_at_rename is not None:
            _arm(lambda: os._exit(137), kill_at_rename)
        fn()
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    os._exit(0)


class Child:
    """One run of ``fn`` in a fresh child; with ``kill_at_rename`` k, it dies (no cleanup) at its k-th rename
    inside a commit."""

    def __init__(self, fn, log_dir: Path, kill_at_rename: int | None = None, ctx=_CTX):
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log = log_dir / f"child-{next(_LOG_IDS)}.log"
        self.proc = ctx.Process(target=_child_main, args=(fn, str(self.log), kill_at_rename, ctx is _CTX), daemon=True)
        self.proc.start()
        self.pid = self.proc.pid
        try:  # a handle on this very process: its PID may be reused once the forkserver has reaped it
            self.pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            self.pidfd = None

    def kill(self) -> None:
        """SIGKILL it, if it still runs."""
        with contextlib.suppress(ProcessLookupError):
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            elif self.proc.is_alive():
                os.kill(self.pid, signal.SIGKILL)

    def wait(self) -> int:
        """Its exit code (negative: killed by that signal); fails the test if it outlives ``RUN_TIMEOUT``."""
        self.proc.join(RUN_TIMEOUT + 30)
        if self.proc.exitcode is None:  # even the watchdog did not end it (stuck outside Python)
            self.kill()
            self.proc.join()
            pytest.fail(f"child {self.pid} hung for more than {RUN_TIMEOUT + 30:.0f} s and was killed:\n{self.tail()}")
        if "Timeout (" in self.tail():  # faulthandler's watchdog fired
            pytest.fail(f"child {self.pid} ran longer than {RUN_TIMEOUT:.0f} s; its stacks:\n{self.tail()}")
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        return self.proc.exitcode

    def tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no output)"


class _Call:
    """``fn(*args)`` as a picklable callable."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __call__(self):
        self.fn(*self.args)


class _Run:
    """``case.run(out, new)`` as a picklable callable (a child gets it through the forkserver)."""

    def __init__(self, tiny_dir: Path, name: str, out: Path, new: bool):
        self.tiny_dir, self.name, self.out, self.new = tiny_dir, name, out, new

    def __call__(self):
        _cases(self.tiny_dir)[self.name].run(self.out, new=self.new)


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


class Case:
    """One writing command: ``run(out, new)`` writes the new (or the old) output into ``out``."""

    def __init__(self, tiny_dir, name, run, entries=None, tag=None, sample_steps=None):
        self.tiny_dir, self.name, self.run = tiny_dir, name, run
        self.entries, self.tag, self.sample_steps = entries, tag, sample_steps

    def child(self, out: Path, kill_at_rename: int | None = None) -> Child:
        """The new run into ``out``, started in a child."""
        return Child(_Run(self.tiny_dir, self.name, out, True), self.logs, kill_at_rename)

    def prepare(self, root: Path):
        self.old_tree, self.out, self.logs = root / "old" / self.name, root / self.name, root / "logs"
        self.run(self.out, new=False)  # written where the runs go: paths recorded inside are the same
        shutil.copytree(self.out, self.old_tree)
        self.old = snapshot(self.out, self.entries)
        ref = root / "ref" / self.name
        start = time.perf_counter()
        run = self.child(ref)
        assert run.wait() == 0, f"{self.name}: the reference run failed:\n{run.tail()}"
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
        run = self.child(self.out)
        assert run.wait() == 0, f"{self.name}: rerun failed:\n{run.tail()}"
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

    def do_tiny_build(out, new):
        from dataclasses import replace

        from dpvr.tiny.build import BuildConfig, StageConfig, build

        stage = StageConfig(steps=2, lr=1e-3, batch=256, warmup=1)
        cfg = replace(BuildConfig.quick(seed=0 if new else 1, focus=False), clip=replace(stage, batch=8), align=stage,
                      instruct=replace(stage, vision_lr_scale=0.3), eval_limit=2, blind_eval_limit=1)
        build(out, cfg, data_dir=str(tiny_dir / "data"), overwrite=True, progress=False, command=["tiny", "build"])

    def do_generate(out, new):
        generate_dataset(out, seed=0 if new else 1, num_train=12, num_test_per_family=6, overwrite=True, progress=False)

    return {
        "train": Case(tiny_dir, "train", do_train, ["adapter", "loss.jsonl", "loss.png", "train_args.json", "result.json"],
                      "train", sample_steps=2),
        "eval": Case(tiny_dir, "eval", do_eval, ["predictions", "results.md", "results.json"], "eval"),
        "analyze": Case(tiny_dir, "analyze", do_analyze, ["saturation.json", "saturation.png"], "analyze", sample_steps=2),
        "generate": Case(tiny_dir, "generate", do_generate, None, None),
        "tiny_build": Case(tiny_dir, "tiny_build", do_tiny_build, None, None),
    }


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the in-process runs as the children run (one thread each): a shared 2-core machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", autouse=True)
def _report():
    if sys.platform.startswith("linux"):
        _CTX.set_forkserver_preload(PRELOAD)  # once, before its first child: the imports are paid once
        warm = _CTX.Process(target=os.getpid)  # start it now, so that no timed run includes its start
        warm.start()
        warm.join()
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


LINUX_ONLY = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux (forkserver, renameat2)")


@LINUX_ONLY
@pytest.mark.parametrize("name", ["eval", "generate", pytest.param("analyze", marks=pytest.mark.slow), "train",
                                  pytest.param("tiny_build", marks=pytest.mark.slow)])
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
        run = case.child(case.out)
        time.sleep(delay)
        run.kill()
        landed += run.wait() == -signal.SIGKILL
        COUNTS["kills"] += 1
        case.check(after_kill=True)
        case.rerun_matches()
    COUNTS["kills_landed"] += landed
    # 2. killed at a rename of the commit: what is there is old or new entry by entry, and the rerun finishes it
    for k in steps:
        case.reset()
        run = case.child(case.out, kill_at_rename=k)
        code = run.wait()
        assert code == 137, f"{name}: run failed with {code} before commit step {k}:\n{run.tail()}"
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


def _hold_progress_lock(ready: str) -> None:  # pragma: no cover - child
    from tqdm import tqdm

    tqdm.get_lock().acquire()  # as during a progress-bar refresh
    Path(ready).touch()
    time.sleep(600)


def _draw_progress_bar(started: str) -> None:  # pragma: no cover - child
    from tqdm import tqdm

    Path(started).touch()
    for _ in tqdm(range(3), disable=False, mininterval=0):
        pass


def _wait_for(path: Path, child: Child, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert child.proc.exitcode is None, f"the child ended ({child.proc.exitcode}) early:\n{child.tail()}"
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.02)


def _lock_scenario(tmp: str, start: str) -> None:
    """Kill a child while it holds tqdm's lock, then start the next child and see whether its bar blocks."""
    from tqdm import tqdm

    tmp_path = Path(tmp)
    multiprocessing.current_process().daemon = False  # run as a throwaway child, it starts children of its own
    faulthandler.cancel_dump_traceback_later()  # its watchdog thread would not survive the fork into those children
    tqdm.get_lock()  # this process has drawn progress bars before (the lock exists, as in a full suite run)
    ctx = _CTX if start == "forkserver" else multiprocessing.get_context("fork")
    holder = Child(_Call(_hold_progress_lock, str(tmp_path / "ready")), tmp_path, ctx=ctx)
    _wait_for(tmp_path / "ready", holder)
    holder.kill()
    assert holder.wait() == -signal.SIGKILL
    bar = Child(_Call(_draw_progress_bar, str(tmp_path / "started")), tmp_path, ctx=ctx)
    _wait_for(tmp_path / "started", bar)
    bar.proc.join(3 if start == "fork" else 120)
    if start == "fork":
        assert bar.proc.exitcode is None, "forked from the test process, the bar did not block: the cause is not this"
        bar.kill()
        bar.proc.join()
    else:
        assert bar.proc.exitcode == 0, f"the next run blocked or failed:\n{bar.tail()}"


@LINUX_ONLY
@pytest.mark.parametrize("start", ["forkserver", "fork"])
def test_a_run_killed_inside_a_progress_refresh_does_not_block_the_next(tmp_path, start):
    """The cause of the CI hang, reproduced: a child SIGKILLed while it holds tqdm's lock. Forked from the process
    that made the lock, the next child's first progress bar waits forever on the inherited semaphore; forked from
    the clean forkserver, as the fault-injection runs are, it finishes.

    The fork case runs in a throwaway process of its own: the semaphore the killed child leaves held is shared
    with the process it was forked from, and the test process would then block at its next progress bar."""
    if start == "forkserver":
        _lock_scenario(str(tmp_path), start)
        return
    scenario = Child(_Call(_lock_scenario, str(tmp_path / "inner"), start), tmp_path)
    assert scenario.wait() == 0, scenario.tail()
