"""Exclusive writer locks, and atomic file replacement: what keeps two writers, or a killed one,
from silently corrupting a store, a run directory or an index file.

A lock is a file holding its holder's pid, host and start time (JSON), locked with `flock`. The
kernel drops a `flock` when its holder dies, so a lock left by a killed process (kill -9, OOM) is
recovered by the next writer without guessing from pids; the file's contents only serve the error
message. A lock already held by this process is shared (counted): one process is one writer, and
re-opening a store it writes must not fail.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import threading
import time
import uuid
import warnings
import weakref
from pathlib import Path
from typing import Self

LOCK_FILE = ".writer.lock"


class LockError(RuntimeError):
    """Another process holds the writer lock; the message names the holder and the lock file."""


_held: dict[str, tuple[int, int, int]] = {}  # lock path -> (fd, refcount, pid of the holder)
_held_guard = threading.Lock()


def _holder_info() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def read_holder(path: str | Path) -> dict | None:
    """The holder recorded in a lock file (pid, host, started), or None when it is missing or torn."""
    try:
        info = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class WriterLock:
    """An exclusive lock on `path` (a lock file) for `what` (e.g. "store data/pusht.zarr").

    `acquire()` raises LockError naming the holder when another process has it; `release()` (or
    the end of a `with` block, garbage collection, or process exit) frees it.
    """

    def __init__(self, path: str | Path, what: str | None = None):
        self.path = Path(path)
        self.what = what or str(self.path)
        self._key = os.path.realpath(self.path)
        self._finalizer: weakref.finalize | None = None

    @property
    def held(self) -> bool:
        return self._finalizer is not None and self._finalizer.alive

    def acquire(self) -> WriterLock:
        if self.held:
            return self
        with _held_guard:
            entry = _held.get(self._key)
            if entry is not None and entry[2] == os.getpid():
                _held[self._key] = (entry[0], entry[1] + 1, entry[2])
            else:
                _held[self._key] = (self._lock_file(), 1, os.getpid())
        self._finalizer = weakref.finalize(self, _release, self._key, self.path)
        return self

    def release(self) -> None:
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _lock_file(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            previous = read_holder(self.path)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise LockError(self._held_message(read_holder(self.path))) from None
            except OSError as err:
                os.close(fd)
                if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    warnings.warn(f"{self.path}: the file system does not support locks; {self.what} is not "
                                  f"protected against a second writer", stacklevel=4)
                    return -1
                raise
            # The previous holder may have released and removed the file between our open and
            # our flock: then we hold a lock on a file nobody else can see. Retry on the new one.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            if previous and previous.get("host") == socket.gethostname() and not _pid_alive(int(previous["pid"])):
                warnings.warn(f"recovered a stale writer lock on {self.what}: its holder (pid {previous['pid']}, "
                              f"started {previous.get('started')}) died without releasing it", stacklevel=4)
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(_holder_info()).encode(), 0)
            os.fsync(fd)
            return fd
        raise LockError(f"cannot take the writer lock {self.path} on {self.what}: it keeps being replaced")

    def _held_message(self, holder: dict | None) -> str:
        if holder is None:
            who = "another process (its details are not written yet)"
        else:
            who = f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"
            if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", -1))):
                who += " (that pid is gone: a child process it started still holds the lock)"
        return (f"{self.what} is being written by {who}; two writers would corrupt it. Wait for that "
                f"process to finish or stop it (lock file: {self.path})")


def _release(key: str, path: Path) -> None:
    with _held_guard:
        entry = _held.get(key)
        if entry is None or entry[2] != os.getpid():
            return
        fd, count, pid = entry
        if count > 1:
            _held[key] = (fd, count - 1, pid)
            return
        del _held[key]
    if fd < 0:
        return
    try:
        os.unlink(path)  # while still locked: a waiting process then finds a fresh file
    except FileNotFoundError:
        pass
    os.close(fd)


class RunDirLock(WriterLock):
    """The writer lock of a training run directory (`<run_dir>/.writer.lock`): one `train.py` per run."""

    def __init__(self, run_dir: str | Path):
        super().__init__(Path(run_dir) / LOCK_FILE, what=f"run directory {run_dir}")


def store_lock(store_path: str | Path) -> WriterLock:
    """The writer lock of a zarr store: a hidden file beside it (`.<name>.lock`), so that copying
    the store never copies a lock, and zarr never sees a foreign key inside it."""
    store_path = Path(store_path)
    return WriterLock(store_path.parent / f".{store_path.name}.lock", what=f"store {store_path}")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace `path` with `text` so that a reader (or a crash) sees the old or the new file, never a
    torn one: write a temp file beside it, fsync, `os.replace`, fsync the directory."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
