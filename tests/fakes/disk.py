"""A real small filesystem (tmpfs, size-limited) for full-disk tests, and a filler to make it full."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_disk(where: Path, size: str = "2m") -> Iterator[Path]:
    """Mount a tmpfs of `size` at `where` and unmount it afterwards (root only, as CI runs)."""
    if os.geteuid() != 0:
        pytest.fail("full-disk tests mount a size-limited tmpfs, which needs root: run the suite as root")
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        # Lazy: a process the test started may still hold a file there for a moment.
        subprocess.run(["umount", "--lazy", str(where)], check=True)


def free_bytes(disk: Path) -> int:
    stats = os.statvfs(disk)
    return stats.f_bavail * stats.f_frsize


def fill(disk: Path, *, leave: int = 0, name: str = "filler") -> Path:
    """Take the disk's free space, all of it or all but `leave` bytes, with a file of zeros."""
    path = disk / name
    with open(path, "ab", buffering=0) as file:
        while free_bytes(disk) > leave:
            try:
                file.write(bytes(min(64 * 1024, max(4096, free_bytes(disk) - leave))))
            except OSError:
                break
    return path
