"""Stages of the demo: each writes into its own folder, and is skipped when already done with the same settings.

A stage is done when ``<folder>/stage.json`` exists and records the same settings (a hash of
them); it is written last, after the stage's own outputs. A failing stage raises `StageError`
naming the stage and the cause, and leaves no ``stage.json``, so the next run redoes it.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable

from dpvr.io import write_json_atomic

STAGE_FILE = "stage.json"


class StageError(RuntimeError):
    """A demo stage failed: says which one and why."""


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_stage(name: str, folder: Path, settings: dict, fn: Callable[[], dict], log: Callable[[str], None] = print,
              timings: dict | None = None) -> dict:
    """Run ``fn`` (returning the stage's JSON-able result) unless ``folder`` already holds it for ``settings``.

    ``timings`` (if given) receives ``{name: {"seconds", "reused"}}``: the measured time of the stage,
    this run's or, when reused, the run's that made it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / STAGE_FILE
    digest = settings_hash(settings)
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("settings_hash") == digest:
            log(f"[{name}] done before with the same settings: reusing {folder}")
            if timings is not None:
                timings[name] = {"seconds": done.get("seconds"), "reused": True}
            return done["result"]
        log(f"[{name}] settings changed since the last run: redoing it")
        marker.unlink()  # a kill while redoing must not leave the old marker beside new outputs
    log(f"[{name}] running ...")
    start = time.perf_counter()
    try:
        result = fn()
    except Exception as err:  # noqa: BLE001 - re-raised with the stage named
        raise StageError(f"stage {name!r} failed: {type(err).__name__}: {err}") from err
    seconds = time.perf_counter() - start
    write_json_atomic(marker, {"stage": name, "settings": settings, "settings_hash": digest, "seconds": seconds,
                               "result": result})
    if timings is not None:
        timings[name] = {"seconds": seconds, "reused": False}
    log(f"[{name}] finished in {seconds:.0f} s")
    return result
