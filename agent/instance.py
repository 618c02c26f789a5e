"""One agent per data directory: an OS lock held for the life of the process.

Two agents on one data directory fight over the serial lines and the broker
session and interleave their writes to the outbox. ``flock`` on a lock file in
the data directory keeps the second one out; the kernel releases it whenever
the holder dies (even on SIGKILL), so a crash never leaves a stale lock behind.
The file also holds the holder's pid, so the refusal can name it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType
from typing import Self

LOCK_FILE = "agent.lock"


class AlreadyRunning(Exception):
    """Another process holds the data directory's lock."""

    def __init__(self, path: Path, pid: int | None) -> None:
        who = f"pid {pid}" if pid is not None else "another process"
        super().__init__(
            f"another agent ({who}) is already running on {path.parent} "
            f"(lock {path}); stop it first, e.g. systemctl stop armoire"
        )
        self.path = path
        self.pid = pid


class InstanceLock:
    """The exclusive lock of one data directory; release by :meth:`release` or exit."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`AlreadyRunning` (OSError if the file cannot be made)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = holder(self.path)
            os.close(fd)
            raise AlreadyRunning(self.path, pid) from None
        except BaseException:
            os.close(fd)
            raise
        # Ours now: record who holds it (a read-only medium still locks; the pid is a courtesy).
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (idempotent); closing the descriptor releases it."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def holder(path: Path) -> int | None:
    """The pid recorded in a lock file, if any."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def running_pid(data_dir: Path) -> int | None:
    """The pid of the agent running on ``data_dir`` (0 if unknown), or None if none runs."""
    path = data_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return holder(path) or 0
    finally:
        os.close(fd)
    return None
