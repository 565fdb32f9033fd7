"""Output locks: one writer per --out, the holder named; stale locks (dead, empty, garbage) taken over; --out checked."""

from __future__ import annotations

import json
import os
import stat

import pytest

from dpvr.outlock import OutputBusy, OutputError, acquire, check_out, lock_path, output_lock
from outlock_helpers import hold_lock


def test_a_live_holder_is_named_and_its_folder_untouched(tmp_path):
    out = tmp_path / "run"
    with hold_lock(out) as pid:
        with pytest.raises(OutputBusy, match=f"in use by another dpvr process \\(pid {pid}"):
            with output_lock(out):
                pass
    assert not out.exists()  # the refused run created nothing


@pytest.mark.parametrize("content", ["", "{garbage", json.dumps({"pid": 2**22 + 12345, "host": os.uname().nodename})],
                         ids=["empty", "unparseable", "dead-pid"])
def test_stale_locks_are_taken_over(tmp_path, content):
    out = tmp_path / "run"
    lock_path(out).write_text(content)
    with output_lock(out):
        assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()
        assert acquire(out) is None  # held: another acquire (another descriptor) is refused


def test_lock_is_released_when_its_process_dies(tmp_path):
    out = tmp_path / "run"
    with hold_lock(out):
        assert acquire(out) is None
    lock = acquire(out)
    assert lock is not None
    lock.release()


def test_output_paths_are_checked_before_any_work(tmp_path):
    afile = tmp_path / "f"
    afile.write_text("x")
    with pytest.raises(OutputError, match="exists and is not a folder"):
        check_out(afile)
    with pytest.raises(OutputError, match="cannot be created: .* is a file"):
        check_out(afile / "sub")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
        with pytest.raises(OutputError, match="not writable"):
            check_out(ro / "sub")
        ro.chmod(0o755)


def test_a_failed_run_leaves_no_empty_out_behind(tmp_path):
    out = tmp_path / "a" / "b"
    with pytest.raises(RuntimeError):
        with output_lock(out):
            out.mkdir(parents=True)
            raise RuntimeError("boom")
    assert not (tmp_path / "a").exists()
    existing = tmp_path / "keep"
    existing.mkdir()
    with pytest.raises(RuntimeError):
        with output_lock(existing):
            raise RuntimeError("boom")
    assert existing.is_dir()  # not created by the run: kept
