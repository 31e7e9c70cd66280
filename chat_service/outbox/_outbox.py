"""The outbox: records wait on local disk until analytics acknowledges them."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from servicekit.logging import Throttle, get_logger

from ..analytics_client import RecordItem
from . import _store as store
from ._owners import OwnerSlots
from ._space import Reserve, busy, error_name, out_of_space
from ._writer import Writer, WriterStalled

T = TypeVar("T")
Status = Literal["unavailable", "disk_full", "failing", "stalled", "at_bound", "ok"]

DEFAULT_RESERVE_BYTES = 512 * 1024
log = get_logger("outbox")


@dataclass(frozen=True, slots=True)
class Stats:
    status: Status
    reason: str
    depth: int | None  # records waiting, all processes together; None while the file is not open
    dead_letters: int | None
    owner: int | None  # this process's owner slot
    adopted: list[int]  # slots taken over from processes that died with records left


class OutboxRefused(Exception):
    """The record was not committed: the chat must not answer 200."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OutboxFull(OutboxRefused):
    """The outbox holds its maximum number of records."""

    def __init__(self) -> None:
        super().__init__("at_bound")


class OutboxUnavailable(OutboxRefused):
    """The outbox cannot take records now: the disk is full, the file did not open, or SQLite failed."""


def _retryable(error: BaseException) -> bool:
    return out_of_space(error) or busy(error)


class Outbox:
    """A SQLite file in WAL mode, driven from one writer thread; several processes may share it.

    A 200 means the record is committed to the file (it survives SIGKILL of chat). Each process
    delivers only the records of the owner slots it holds (see `_owners`), so claims are the
    slots themselves: nothing is written to claim a record, and a full disk cannot stop delivery.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_rows: int,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
        busy_timeout: float = 2.0,
        max_group: int = 1000,
        append_timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        # An append the writer thread has not taken within this many seconds is withdrawn (the
        # chat answers 503, nothing recorded); a writer on one job for longer is `stalled`.
        if append_timeout is not None and append_timeout <= 0:
            raise ValueError("append_timeout must be positive, or None for no timeout")
        self.append_timeout = append_timeout
        self.max_rows = max_rows
        self.busy_timeout = busy_timeout
        # Headroom: the WAL grows back to its limit before the next checkpoint, and the reserve
        # again for records; less, and a disk that fills up would flap between 200 and 503.
        self.reserve = Reserve(
            self.path.with_name(f"{self.path.name}-reserve"), reserve_bytes, headroom=reserve_bytes + store.WAL_SIZE_LIMIT
        )
        self.slots = OwnerSlots(self.path.with_name(f"{self.path.name}-owners"))
        self.writer: Writer[RecordItem] = Writer(self._commit_group, max_group=max_group)
        self._db: sqlite3.Connection | None = None
        self._unavailable = "not_open"  # why the file is not open, while it is not
        self._disk_full = False
        self._failing: str | None = None
        self._at_bound = False
        # An append was withdrawn: stalled until a write (an append, an acknowledgement, the probe in
        # `maintain`) makes the round trip within `append_timeout` with no withdrawal meanwhile
        # (refusing until then: a disk that stalls once per lock wait must not flap between ready
        # and not). Both are read and written on the event loop only.
        self._stalled = False
        self._withdrawals = 0
        self.refusals_logged = Throttle()  # a chat refused per reason is logged at most every 5 s
        self._clock = clock
        self._counted: tuple[float, int, int] | None = None  # (when, depth, dead letters) of the last count
        self._counting: asyncio.Future[Stats] | None = None  # the count under way: concurrent callers share it

    # -- state, read on the event loop (plain attributes written by the writer thread, but `_stalled`) --

    @property
    def status(self) -> Status:
        if self._db is None:
            return "unavailable"
        if self._disk_full:
            return "disk_full"
        if self._failing is not None:
            return "failing"
        if self._stalled or (self.append_timeout is not None and self.writer.busy_seconds() > self.append_timeout):
            return "stalled"
        return "at_bound" if self._at_bound else "ok"

    @property
    def accepting(self) -> bool:
        """Appends can succeed: the file is open, the disk has its reserve, SQLite works, there is room."""
        return self.status == "ok"

    @property
    def reason(self) -> str:
        """Why the outbox is not accepting (`unavailable`: the error that kept it from opening)."""
        status = self.status
        if status == "unavailable":
            return self._unavailable
        return self._failing if status == "failing" and self._failing else status

    # -- the API, for the event loop --

    async def open(self) -> None:
        """Open the file, or stay unavailable (`maintain` retries) when the disk is full or locked.

        Raises when the path can never work: a parent that is a file, no permission, not a database.
        """
        if not self.writer.running:
            self.writer.start()
        try:
            await self.writer.call(self._open)
        except Exception as error:
            if not _retryable(error):
                raise
            self._unavailable = error_name(error)
            log.warning("outbox_unavailable", error=self._unavailable, path=str(self.path))

    async def append(self, item: RecordItem) -> None:
        """Commit the record to disk (with whatever appends arrive together); raise `OutboxRefused` if not."""
        timeout = self.append_timeout
        if timeout is None:
            await self.writer.append(item)
            return
        started, withdrawals = time.monotonic(), self._withdrawals
        try:
            await self.writer.append(item, withdraw_after=timeout)
        except WriterStalled:
            self._stalled = True  # the writer, not the loop, fell behind (see `Writer.append`)
            self._withdrawals += 1
            raise OutboxUnavailable("withdrawn") from None
        self._wrote_in_time(started, withdrawals)

    def _wrote_in_time(self, started: float, withdrawals: int) -> None:
        """A write made its round trip (queued, taken, committed): in time, it ends a stall."""
        if (
            self._stalled
            and self._withdrawals == withdrawals
            and self.append_timeout is not None
            and time.monotonic() - started <= self.append_timeout
        ):
            self._stalled = False

    async def next_batch(self, limit: int) -> list[store.Row]:
        """The oldest records of the slots this process holds (a read: it claims nothing on disk)."""
        return await self.writer.call(lambda: [] if self._db is None else store.oldest(self._db, self.slots.held, limit))

    async def acknowledge(self, ids: Sequence[int]) -> None:
        """Delete delivered records in one transaction; on a full disk, give the space back."""
        started, withdrawals = time.monotonic(), self._withdrawals
        await self.writer.call(lambda: self._write(lambda db: store.delete(db, ids)))
        self._wrote_in_time(started, withdrawals)

    async def dead_letter(self, row_id: int, status: int | None) -> None:
        await self.writer.call(lambda: self._write(lambda db: store.dead_letter(db, row_id, status)))

    async def stats(self, *, max_age: float = 0.0, max_wait: float | None = None) -> Stats:
        """Counts for operators: exact, or up to `max_age` seconds old.

        Counting is a scan of the owner index on the writer thread (55-75 us a call with the
        thread hop, 1k to 100k records, measured): a metrics scrape passes `max_age=1` so that
        any number of scrapers costs at most one count a second and no thread hop in between.

        With `max_wait`, a count that the writer thread has not finished within that many seconds
        (a stalled disk holds it, with every append) is left to finish in the background: the
        answer is the last count, however old (with `max_age` > 0), or no count (depth None).
        Monitoring must not go dark when the disk does.
        """
        counted = self._counted
        if counted is not None and max_age > 0 and self._db is not None and self._clock() - counted[0] < max_age:
            return self._stats(counted[1], counted[2])
        if max_wait is None:
            return await self.writer.call(self._count)
        counting = self._counting
        if counting is None or counting.done() or max_age <= 0:  # an exact count starts after the call
            counting = self._counting = asyncio.ensure_future(self.writer.call(self._count))
            # read by whoever is still waiting, else here: a failure left behind is not an error to log
            counting.add_done_callback(lambda done: done.cancelled() or done.exception())
        done, _ = await asyncio.wait({counting}, timeout=max_wait)
        if done:
            return counting.result()
        counted = self._counted
        if counted is None or max_age <= 0:  # an exact count was asked for: unknown, never stale
            return self._stats(None, None)
        return self._stats(counted[1], counted[2])

    def _count(self) -> Stats:
        """On the writer thread: count now."""
        db = self._db
        if db is None:
            return self._stats(None, None)
        depth, dead = store.count(db), store.dead_letter_count(db)
        self._counted = (self._clock(), depth, dead)
        return self._stats(depth, dead)

    def _stats(self, depth: int | None, dead_letters: int | None) -> Stats:
        return Stats(
            status=self.status,
            reason=self.reason,
            depth=depth,
            dead_letters=dead_letters,
            owner=self.slots.own,
            adopted=self.slots.adopted,
        )

    async def owned_depth(self) -> int | None:
        """Records this process is responsible for delivering."""
        return await self.writer.call(lambda: None if self._db is None else store.count(self._db, self.slots.held))

    async def maintain(self) -> None:
        """Reopen, adopt dead processes' records, give back space and re-check the bound; never raises.

        While stalled, first a probe: the write lock taken and given back, on its own.
        """
        if self._stalled and self._db is not None:
            started, withdrawals = time.monotonic(), self._withdrawals
            try:
                await self.writer.call(self._probe_write_lock)
            except Exception as error:
                log.warning("outbox_maintenance_failed", error=error_name(error))
            else:
                self._wrote_in_time(started, withdrawals)
        try:
            await self.writer.call(self._maintain)
        except Exception as error:
            log.warning("outbox_maintenance_failed", error=error_name(error))

    async def close(self) -> None:
        if self.writer.running:
            await self.writer.call(self._close)
            await self.writer.stop()

    # -- on the writer thread --

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.slots.own is None:
            self.slots.take()
        try:
            db = store.connect(self.path, busy_timeout=self.busy_timeout)
        except sqlite3.Error as error:
            # What the reserve is for: room to open the WAL (its -shm file) and drain.
            if not (out_of_space(error) and self.reserve.release()):
                raise
            log.warning("outbox_reserve_released", during="open")
            db = store.connect(self.path, busy_timeout=self.busy_timeout)
        self._db = db
        self._disk_full = not self.reserve.make()
        self._adopt(db)
        log.info("outbox_opened", owner=self.slots.own, adopted=self.slots.adopted, status=self.status, pid=os.getpid())

    def _commit_group(self, items: Sequence[RecordItem]) -> list[BaseException | None]:
        db = self._db
        if db is None:
            return [OutboxUnavailable("unavailable") for _ in items]
        assert self.slots.own is not None
        try:
            if not self.reserve.present():  # the disk filled up, here or in another process
                self._disk_full = True
                return [OutboxUnavailable("disk_full") for _ in items]
            self._disk_full = False
            accepted = store.insert(db, self.slots.own, items, self.max_rows)
        except (sqlite3.Error, OSError) as error:
            if out_of_space(error):
                self._enter_disk_full()
            elif not busy(error):
                self._failing = error_name(error)
            return [OutboxUnavailable(error_name(error)) for _ in items]
        self._failing = None
        self._at_bound = accepted < len(items)
        return [None] * accepted + [OutboxFull() for _ in items[accepted:]]

    def _write(self, statement: Callable[[sqlite3.Connection], T]) -> T:
        """Run a statement that frees space (or nearly): on SQLITE_FULL use the reserve, once."""
        db = self._db
        if db is None:
            raise OutboxUnavailable("unavailable")
        try:
            result = statement(db)
        except sqlite3.Error as error:
            if not out_of_space(error):
                raise
            self._enter_disk_full()
            result = statement(db)  # with the reserve's room; raises again when even that is not enough
        self._at_bound = False
        if self._disk_full:
            self._recover_space(db)
        return result

    def _enter_disk_full(self) -> None:
        self._disk_full = True
        if self.reserve.release():
            log.warning("outbox_disk_full", reserve_released=self.reserve.size)

    def _recover_space(self, db: sqlite3.Connection) -> None:
        """Give the freed pages and the WAL back to the disk; accept again once the reserve is back."""
        try:
            store.checkpoint(db, busy_timeout=self.busy_timeout)
            store.shrink(db)
            store.checkpoint(db, busy_timeout=self.busy_timeout)
        except sqlite3.Error as error:
            log.debug("outbox_shrink_deferred", error=error_name(error))
        if self.reserve.make():
            self._disk_full = False
            log.info("outbox_space_recovered")

    def _adopt(self, db: sqlite3.Connection) -> None:
        for owner in store.owners(db):
            try:
                if owner not in self.slots.held and self.slots.try_lock(owner):
                    log.info("outbox_adopted", owner=owner)
            except OSError as error:  # no room for the slot file: next time
                log.warning("outbox_adopt_failed", owner=owner, error=error_name(error))

    def _maintain(self) -> None:
        if self._db is None:
            try:
                self._open()
            except Exception as error:
                self._unavailable = error_name(error)
                raise
        db = self._db
        assert db is not None
        self._adopt(db)
        for slot in self.slots.adopted:  # drained: let it go (only its holder appends with it)
            if db.execute("SELECT 1 FROM outbox WHERE owner = ? LIMIT 1", (slot,)).fetchone() is None:
                self.slots.unlock(slot)
        if self._at_bound:
            self._at_bound = store.count(db) >= self.max_rows
        if self.reserve.present():
            self._disk_full = False
        else:
            self._disk_full = True
            self._recover_space(db)
        if self._failing is not None:
            with store.transaction(db):  # the write lock can be taken again: SQLite works
                pass
            self._failing = None

    def _probe_write_lock(self) -> None:
        db = self._db
        if db is None:
            raise OutboxUnavailable("unavailable")
        with store.transaction(db):
            pass

    def _close(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error as error:
                log.warning("outbox_close_failed", error=error_name(error))
            self._db = None
        self.slots.close()
