"""Owner slots: which process may deliver which records, told by `flock`, not by pids.

Each process holds an exclusive `flock` on one small file `<n>.lock` for as long as it lives and
tags the records it appends with `n`. The kernel drops the lock when the process dies, however
it dies, so "can I lock slot n?" answers "is its owner gone?" without pids: no pid reuse, no
"our own pid 1 counts as dead" in containers. A process delivers only the records of slots it
holds, so no two processes ever send the same record, and claims need no write to the
database (on a full disk there is no room for one). Slot files are never deleted: a restarted
process takes the lowest free slot, often its predecessor's, and with it that slot's records.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
from pathlib import Path


class OwnerSlots:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.own: int | None = None
        self._held: dict[int, int] = {}  # slot -> file descriptor holding its lock

    @property
    def held(self) -> list[int]:
        """Our own slot first, then the slots adopted from dead processes."""
        return sorted(self._held, key=lambda slot: (slot != self.own, slot))

    @property
    def adopted(self) -> list[int]:
        return [slot for slot in self._held if slot != self.own]

    def take(self) -> int:
        """Lock the lowest free slot as this process's own."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for slot in itertools.count():
            if self.try_lock(slot):
                self.own = slot
                return slot
        raise AssertionError("unreachable")  # pragma: no cover

    def try_lock(self, slot: int) -> bool:
        """Lock a slot if its owner is gone (or it never had one); True when we now hold it."""
        if slot in self._held:
            return True
        fd = os.open(self.directory / f"{slot}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._held[slot] = fd
        return True

    def unlock(self, slot: int) -> None:
        fd = self._held.pop(slot, None)
        if fd is not None:
            os.close(fd)  # closing the only descriptor drops the flock
        if slot == self.own:
            self.own = None

    def close(self) -> None:
        for slot in list(self._held):
            with contextlib.suppress(OSError):
                self.unlock(slot)
