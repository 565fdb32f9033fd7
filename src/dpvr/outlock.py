"""One writer per output folder: ``output_lock(out)`` around everything a command writes to ``--out``.

The lock is ``filelock``'s ``FileLock`` (``flock``) on a hidden file beside the folder,
``<parent>/.<name>.lock``, so it never appears in the output and survives the folder being swapped.
The kernel drops an ``flock`` when its process dies, so a lock left by a killed run (its file
empty, unparseable or naming a dead PID) is simply free: the next run takes it over in the same
atomic call that would have been refused while the holder lived. The file holds the holder's PID
and command, only to name it in the refusal; the PID is read from ``/proc/locks`` where available.

``check_out`` refuses, before any work, an ``--out`` that is a file, cannot be created or is not
writable. ``output_lock`` also removes the folders it created itself if the run fails and leaves
them empty.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path

from filelock import FileLock, Timeout

_held: dict[str, int] = {}  # lock path -> depth, so nested library calls in one process do not refuse themselves


class OutputError(ValueError):
    """``--out`` cannot be used (a file, not writable, or locked by another process): one line, exit 2."""


class OutputBusy(OutputError):
    """Another live process holds the output folder's lock."""


def lock_path(out: str | Path) -> Path:
    out = Path(os.path.abspath(out))
    return out.parent / f".{out.name}.lock"


def check_out(out: str | Path, flag: str = "--out") -> None:
    """Refuse an output path that is a file, cannot be created, or is not writable (one clear line)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{flag} {out} exists and is not a folder; choose another {flag} or remove the file")
    probe = out
    while not probe.exists():
        if probe.is_symlink():
            raise OutputError(f"{flag} {out}: {probe} is a broken symbolic link; choose another {flag}")
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"{flag} {out} cannot be created: {probe} is a file; choose another {flag}")
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "is not writable" if probe == out else f"cannot be created ({probe} is not writable)"
        raise OutputError(f"{flag} {out} {where}; choose another {flag} or fix the permissions")
    parent = Path(os.path.abspath(out)).parent
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {out}: its folder {parent} is not writable (the lock file goes there); "
                          f"choose another {flag}")


def _holder(path: Path) -> str:
    """'pid N: COMMAND' of the process holding the lock at ``path``, as far as it can be told."""
    info: dict = {}
    with contextlib.suppress(OSError, ValueError):
        info = json.loads(path.read_text() or "{}")
    pid = None
    with contextlib.suppress(OSError, ValueError):
        ino = os.stat(path).st_ino
        for line in Path("/proc/locks").read_text().splitlines():
            parts = line.split()
            if len(parts) > 5 and parts[1] == "FLOCK" and parts[5].rsplit(":", 1)[-1] == str(ino):
                pid = int(parts[4])
                break
    if pid is None:
        pid = info.get("pid")
    if not isinstance(info, dict) or (info.get("pid") not in (None, pid)):
        info = {}
    text = f"pid {pid}" if pid is not None else "pid unknown"
    if info.get("command"):
        text += f": {info['command']}"
    if info.get("since"):
        text += ", since " + time.strftime("%H:%M:%S", time.localtime(info["since"]))
    return text


def acquire(out: str | Path) -> FileLock | None:
    """The lock of ``out`` if free (or stale), else None. Release with ``lock.release()``."""
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
            "command": " ".join(["dpvr" if i == 0 else a for i, a in enumerate(sys.argv)])[:300]}
    with contextlib.suppress(OSError):
        with open(path, "r+") as fh:  # not the locked descriptor: the flock stays untouched
            fh.truncate(0)
            fh.write(json.dumps(info) + "\n")
    return lock


@contextlib.contextmanager
def output_lock(out: str | Path, flag: str = "--out"):
    """Hold ``out``'s lock while writing it; refuse (OutputBusy) if another live process holds it."""
    out = Path(out)
    check_out(out, flag)
    key = str(lock_path(out))
    if key in _held:  # this process already holds it (a library call inside a command)
        _held[key] += 1
        try:
            yield out
        finally:
            _held[key] -= 1
        return
    created = []
    probe = Path(os.path.abspath(out))
    while not probe.exists():
        created.append(probe)
        probe = probe.parent
    try:
        lock = acquire(out)
    except OSError as err:
        raise OutputError(f"{flag} {out}: cannot create its lock file {key} ({err.strerror}); "
                          f"choose another {flag}") from None
    if lock is None:
        raise OutputBusy(f"{flag} {out} is in use by another dpvr process ({_holder(Path(key))}); "
                         f"wait for it to finish or choose another {flag}")
    _held[key] = 1
    try:
        yield out
    except BaseException:
        _release(key, lock)
        if Path(key).parent in created:  # the lock file sits in a folder this run created: it goes too
            Path(key).unlink(missing_ok=True)
        for folder in created:  # innermost first: only what this run created, only if left empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    _release(key, lock)


def _release(key: str, lock: FileLock) -> None:
    del _held[key]
    lock.release()
