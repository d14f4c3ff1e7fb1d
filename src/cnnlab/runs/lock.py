"""A lock per run dir: the process that trains a run holds it, so that two processes started on the
same sweep (or the same config under ``resume=auto``) never train one job twice.

The lock is an ``flock`` on ``<run dir>/.lock``. The kernel releases it when its owner ends, however
it ends (SIGKILL and out-of-memory kills too), so a lock never outlives a dead owner on this host:
that is the stale-lock rule, with no pid to check and no file to clean up. On NFS, Linux maps
``flock`` to byte-range locks that the server keeps across hosts. The file also names its owner
(pid and host) for the message of a process that finds the run taken.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import time
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
# A file system without locks (some FUSE and object-store mounts): runs go on unlocked.
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
# How long acquire() rides over another process's probe (is_locked), which holds a shared lock
# for microseconds.
PROBE_WAIT_S = 1.0


# The fds of the locks this process holds. A forked child (a DataLoader worker) shares their
# open file descriptions, and with them the flock: the lock would outlive a SIGKILLed owner
# until its orphaned workers noticed and exited, and a resume meanwhile found the run "still
# running". Children close them; the owner keeps the lock.
_HELD: set[int] = set()


def _close_held_in_child() -> None:
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


class RunLock:
    """The exclusive lock of ``run_dir``; :meth:`acquire` does not wait for an owner."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock if no other process holds it; True if this process holds it now."""
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + PROBE_WAIT_S
        while not _flock(fd, fcntl.LOCK_EX, self.path):
            if time.monotonic() > deadline:
                os.close(fd)
                return False
            time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self._fd = fd
        _HELD.add(fd)
        return True

    def release(self) -> None:
        if self._fd is not None:
            _HELD.discard(self._fd)
            os.close(self._fd)  # closing the file releases the flock
            self._fd = None

    def owner(self) -> str:
        """Who holds (or last held) the lock, in words."""
        try:
            pid, host = self.path.read_text().split()
        except (OSError, ValueError):
            return "another process"
        return f"process {pid} on {host}"


def is_locked(run_dir: Path) -> bool:
    """Whether another process holds the lock of ``run_dir`` (it is training that run now)."""
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        return not _flock(fd, fcntl.LOCK_SH, path)
    finally:
        os.close(fd)


def _flock(fd: int, kind: int, path: Path) -> bool:
    """Take an flock without waiting; False if another process holds a conflicting one."""
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno not in _UNSUPPORTED:
            raise
        log.warning("%s: this file system has no file locks; runs go on unlocked", path)
    return True
