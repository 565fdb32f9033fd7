"""Test helper: hold an output folder's lock from another process (as a concurrent dpvr run would)."""

from __future__ import annotations

import contextlib
import subprocess
import sys

HOLD = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("outlock", sys.argv[2])  # without dpvr/__init__ (torch): fast
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
lock = mod.acquire(sys.argv[1])
print("held" if lock else "busy", flush=True)
time.sleep(120)
"""


@contextlib.contextmanager
def hold_lock(folder):
    import dpvr.outlock

    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), dpvr.outlock.__file__], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()
