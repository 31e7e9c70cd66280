"""Disk space: which errors mean "full", and the reserve file that lets a full outbox drain."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from pathlib import Path

# SQLITE_IOERR_SHMSIZE: opening a WAL database needs a 32 KiB -shm file; on a full disk that fails.
_SQLITE_SPACE = frozenset({"SQLITE_FULL", "SQLITE_IOERR_SHMSIZE"})
_SQLITE_BUSY = ("SQLITE_BUSY", "SQLITE_LOCKED")
_OS_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
_CHUNK = 64 * 1024


def out_of_space(error: BaseException) -> bool:
    if isinstance(error, sqlite3.Error):
        return getattr(error, "sqlite_errorname", "") in _SQLITE_SPACE
    return isinstance(error, OSError) and error.errno in _OS_SPACE


def busy(error: BaseException) -> bool:
    """Another process held the write lock past busy_timeout: a matter of time, not of health."""
    return isinstance(error, sqlite3.Error) and getattr(error, "sqlite_errorname", "").startswith(_SQLITE_BUSY)


def error_name(error: BaseException) -> str:
    if isinstance(error, sqlite3.Error):
        return str(getattr(error, "sqlite_errorname", type(error).__name__))
    if isinstance(error, OSError) and error.errno is not None:
        return errno.errorcode.get(error.errno, type(error).__name__)
    return type(error).__name__


def free_bytes(directory: Path) -> int:
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize


class Reserve:
    """A file of `size` bytes next to the database, deleted when the disk fills up.

    Deleting it gives the outbox room to open its WAL, delete delivered records and checkpoint.
    Its absence is the full-disk state, shared by every process using the file: appends are
    refused until the outbox has given enough space back to make it again and still have
    `headroom` bytes free (hysteresis: chat does not flap between 200 and 503 at the edge).
    """

    def __init__(self, path: Path, size: int, *, headroom: int | None = None) -> None:
        self.path = path
        self.size = size
        self.headroom = size if headroom is None else headroom

    def present(self) -> bool:
        try:
            return os.stat(self.path).st_size >= self.size
        except FileNotFoundError:
            return False

    def release(self) -> bool:
        """Delete the reserve; True when there was one to delete."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return False
        return True

    def make(self) -> bool:
        """Write the reserve if the disk has room for it and the headroom; True when it is in place."""
        if self.present():
            return True
        if free_bytes(self.path.parent) < self.size + self.headroom:
            return False
        partial = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            # Real zeros, not a sparse file or fallocate: blocks that are really allocated.
            with open(partial, "wb") as file:
                zeros = bytes(_CHUNK)
                for offset in range(0, self.size, _CHUNK):
                    file.write(zeros[: min(_CHUNK, self.size - offset)])
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, self.path)  # atomic: a half-written reserve never counts
        except OSError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)
            return False
        return True
