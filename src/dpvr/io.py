"""Crash-safe file helpers: atomic writes, atomic folder swaps and a journaled multi-file commit.

* ``write_text_atomic`` / ``write_bytes_atomic``: a temp file in the same folder, fsync, rename.
  Temp files and folders are created with mode 0o666 / 0o777 so the kernel applies the process
  umask itself (no process-wide ``os.umask`` call; outputs get the user's usual permissions).
* ``swap_in``: put a complete folder (or file) at ``target`` in one step. On Linux this is
  ``renameat2(RENAME_EXCHANGE)``: at every instant ``target`` is the complete old or the complete
  new copy. Where the kernel or file system cannot exchange, two renames with the old copy kept
  until the new one is in place (``recover`` puts it back if a kill lands between them).
* ``commit_unit``: several outputs of one run (e.g. ``results.json`` + ``results.md`` +
  ``predictions/``) staged in ``staging`` and moved into ``out`` one by one, each step atomic,
  following a journal written first. A failure mid-way rolls the moved entries back; a kill
  mid-way is rolled forward by ``recover_units`` at the next run on the same folder. Stagings
  without a journal are an interrupted run's leftovers and are removed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import secrets
import shutil
from pathlib import Path

JOURNAL = ".commit.json"


def _temp_name(directory: Path, prefix: str) -> Path:
    return directory / f"{prefix}{os.getpid()}-{secrets.token_hex(4)}"


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """``data`` at ``path``: written to a temp file beside it, flushed to disk, then renamed over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path.parent, f".{path.name}.tmp-")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for any new file
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())


def write_json_atomic(path: str | Path, data, *, indent: int = 2, sort_keys: bool = True, default=str,
                      allow_nan: bool = True) -> Path:
    """``data`` as JSON at ``path``, written atomically; ``default`` converts what json cannot."""
    text = json.dumps(data, indent=indent, sort_keys=sort_keys, default=default, allow_nan=allow_nan)
    return write_text_atomic(path, text + "\n")


def make_temp_dir(parent: str | Path, prefix: str) -> Path:
    """A new empty folder ``parent/<prefix><pid>-<random>`` with the usual permissions (not mkdtemp's 0700)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        path = _temp_name(parent, prefix)
        try:
            os.mkdir(path, 0o777)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary folder in {parent}")


def _pid_of(name: str, prefix: str) -> int | None:
    try:
        return int(name[len(prefix):].split("-", 1)[0])
    except ValueError:
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- exchange

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_libc = None


def _renameat2():
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        except OSError:
            _libc = False
    return getattr(_libc, "renameat2", None) if _libc else None


def exchange(a: str | Path, b: str | Path) -> bool:
    """Atomically swap the two existing paths ``a`` and ``b``; False where the platform cannot."""
    fn = _renameat2()
    if fn is None:
        return False
    rc = fn(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, f"cannot exchange {a} and {b}: {os.strerror(err)}")


def swap_in(new: str | Path, target: str | Path) -> None:
    """Put the complete ``new`` at ``target`` (replacing what is there) so that ``target`` is never lost.

    ``new`` must be a sibling of ``target`` whose name starts with ``.<target name>.``: its name tells
    ``recover`` what to do with it after a kill.
    """
    new, target = Path(new), Path(target)
    if not target.exists() and not target.is_symlink():
        os.rename(new, target)
        return
    if exchange(new, target):  # ``new`` now holds the old copy
        _remove(new)
        return
    # Fallback: keep the old copy under a recoverable name until the new one is in place.
    old = _temp_name(target.parent, f".{target.name}.old-")
    os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)
        raise
    _remove(old)


def recover(target: str | Path) -> None:
    """After a kill: restore ``target`` from its ``.old-`` copy if it is missing; drop dead runs' leftovers."""
    target = Path(target)
    parent = target.parent
    if not parent.is_dir():
        return
    olds, leftovers = [], []
    for entry in parent.iterdir():
        for kind in ("old", "tmp"):
            prefix = f".{target.name}.{kind}-"
            if entry.name.startswith(prefix):
                pid = _pid_of(entry.name, prefix)
                if pid is None or pid == os.getpid() or not pid_alive(pid):
                    (olds if kind == "old" else leftovers).append(entry)
    if not target.exists() and olds:
        newest = max(olds, key=lambda p: p.stat().st_mtime)
        os.rename(newest, target)
        olds.remove(newest)
    for entry in olds + leftovers:
        _remove(entry)


# --------------------------------------------------------------------------- multi-file commit

def staging_dir(out: str | Path, tag: str) -> Path:
    """A fresh staging folder inside ``out`` for a unit commit named ``tag`` (e.g. ``eval``)."""
    return make_temp_dir(out, f".{tag}-staging-")


def commit_unit(out: str | Path, staging: str | Path, names: list[str]) -> None:
    """Move ``staging/<name>`` for each name to ``out/<name>`` (the last name is the commit point).

    A journal in ``staging`` is written first, so a kill mid-way is completed by ``recover_units``.
    An exception mid-way (e.g. a failing rename) rolls back the moves already made and re-raises.
    """
    out, staging = Path(out), Path(staging)
    entries = [{"name": n, "ino": os.lstat(staging / n).st_ino, "had_old": (out / n).exists()} for n in names]
    write_json_atomic(staging / JOURNAL, {"entries": entries})
    done: list[dict] = []
    try:
        for entry in entries:
            done.append(entry)  # before the move: a move cut half-way is undone too
            _move_entry(out, staging, entry)
    except BaseException:
        try:
            for entry in reversed(done):
                _undo_entry(out, staging, entry)
        except OSError:
            pass  # the journal stays: the next run on ``out`` rolls the commit forward
        else:
            (staging / JOURNAL).unlink(missing_ok=True)  # rolled back: the staging is now a plain leftover
        raise
    shutil.rmtree(staging, ignore_errors=True)


def _old_name(entry: dict) -> str:
    return f".old-{entry['name']}"


def _move_entry(out: Path, staging: Path, entry: dict) -> None:
    """Idempotent: does nothing if ``out/<name>`` already is the staged entry (same inode)."""
    name, src, dst = entry["name"], staging / entry["name"], out / entry["name"]
    if dst.exists() and os.lstat(dst).st_ino == entry["ino"]:
        return
    if not src.exists():
        raise FileNotFoundError(f"{src} vanished before the commit")
    if not dst.exists():
        os.rename(src, dst)
        return
    if exchange(src, dst):
        os.rename(src, staging / _old_name(entry))
        return
    os.rename(dst, staging / _old_name(entry))
    os.rename(src, dst)


def _undo_entry(out: Path, staging: Path, entry: dict) -> None:
    """Put the old ``out/<name>`` back (whatever step of ``_move_entry`` was reached); the new one back to staging."""
    name, dst, old = entry["name"], out / entry["name"], staging / _old_name(entry)
    if not dst.exists():  # cut between the two renames of the fallback
        if old.exists():
            os.rename(old, dst)
        return
    if os.lstat(dst).st_ino != entry["ino"]:
        return  # the new entry never got there
    if not old.exists() and (staging / name).exists():
        old = staging / name  # exchanged, not yet renamed aside
    if not old.exists():  # there was no old entry
        os.rename(dst, staging / name)
        return
    if not exchange(old, dst):
        aside = staging / f".new-{name}"
        os.rename(dst, aside)
        os.rename(old, dst)


def discard_staging(staging: str | Path) -> None:
    """Remove a staging folder, unless it holds a journal (a commit to be rolled forward by the next run)."""
    staging = Path(staging)
    if not (staging / JOURNAL).is_file():
        shutil.rmtree(staging, ignore_errors=True)


def recover_units(out: str | Path, tag: str) -> None:
    """Finish the journaled commits a kill interrupted in ``out``; remove stagings of dead runs.

    Call it while holding ``out``'s lock, before writing.
    """
    out = Path(out)
    if not out.is_dir():
        return
    prefix = f".{tag}-staging-"
    for staging in sorted(out.iterdir()):
        if not staging.name.startswith(prefix) or not staging.is_dir():
            continue
        pid = _pid_of(staging.name, prefix)
        if pid is not None and pid != os.getpid() and pid_alive(pid):
            continue
        journal = staging / JOURNAL
        if journal.is_file():
            try:
                entries = json.loads(journal.read_text())["entries"]
            except (OSError, ValueError, KeyError, TypeError):
                entries = None
            if entries is not None:
                for entry in entries:
                    _move_entry(out, staging, entry)
        shutil.rmtree(staging, ignore_errors=True)
