"""Small files the agent must never find half-written (seq reservation, time floor, trust
store, staged configuration): one way of replacing them, atomically and durably."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` so that a power cut leaves either the old or the new file, whole:
    write a temporary file, fsync it, rename it over ``path``, fsync the folder."""
    tmp = path.with_name(path.name + ".tmp")
    # O_NOFOLLOW: never write through a symlink planted at the temporary name.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)  # a buffered write: loops until every byte is written
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
