"""One thread that runs every SQLite call of the outbox, so the event loop never waits on disk.

Calls run in arrival order. Appends that are waiting together when the thread comes round are
committed in one transaction (group commit): under load, N concurrent chats pay for one commit
instead of N, and each chat's future still resolves only once its own record is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
Item = TypeVar("Item")

# What the group function returns for each item: None (committed) or the exception to raise.
GroupCommit = Callable[[Sequence[Item]], Sequence[BaseException | None]]


@dataclass(slots=True)
class _Call:
    fn: Callable[[], Any]
    future: asyncio.Future[Any]


_QUEUED, _TAKEN, _WITHDRAWN = range(3)
# A withdrawal that fires this much later than due (or half its timeout, if more) says the loop
# itself did not run: admission's "swamped" is the same 100 ms.
LOOP_LATE = 0.1


class WriterStalled(Exception):
    """The writer thread did not take an append within its timeout: it was withdrawn, never committed."""


@dataclass(slots=True)
class _Append(Generic[Item]):
    item: Item
    future: asyncio.Future[None]
    state: int = _QUEUED  # the writer takes it, or its caller withdraws it first (under `Writer._claims`)
    timer: asyncio.TimerHandle | None = None  # the withdrawal, while armed


class _Stop:
    pass


Settled = list[tuple["asyncio.Future[Any]", Any, BaseException | None]]


def _settle(settled: Settled) -> None:
    for future, value, error in settled:
        if future.done():  # the caller was cancelled; its record may still have been committed
            continue
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)


class Writer(Generic[Item]):
    def __init__(self, commit_group: GroupCommit[Item], *, name: str = "outbox-writer", max_group: int = 1000) -> None:
        self._commit_group = commit_group
        self._max_group = max_group
        self._name = name
        self._queue: queue.SimpleQueue[_Call | _Append[Item] | _Stop] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.groups = 0  # transactions that committed appends (for the benchmark and tests)
        # When the job the thread is on began (time.monotonic), None while it waits for work: a
        # plain float the thread writes and the loop reads, for `busy_seconds`.
        self._busy_since: float | None = None
        self._claims = threading.Lock()  # an append is taken by the writer or withdrawn by its caller, not both

    @property
    def running(self) -> bool:
        return self._thread is not None

    def busy_seconds(self) -> float:
        """How long the thread has been on its current job (0 while it waits for work): a disk
        that stalls shows here while every append and call waits behind it."""
        since = self._busy_since
        return 0.0 if since is None else max(0.0, time.monotonic() - since)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        # A daemon thread: a hung disk must not keep a killed process alive.
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    async def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the writer thread and wait for its result (or its exception)."""
        future: asyncio.Future[T] = self._future()
        self._queue.put(_Call(fn, future))
        return await future

    async def append(self, item: Item, *, withdraw_after: float | None = None) -> None:
        """Commit `item` together with whatever other appends are waiting.

        With `withdraw_after`: if the thread has not taken the item within that many seconds (a stalled
        disk holds it on an earlier job), the item is withdrawn, never to be committed, and
        `WriterStalled` raised. Once taken, the append runs to its end, however long that is. Seconds
        in which the event loop itself did not run (a paused process) do not count against the thread.
        """
        if withdraw_after is not None and withdraw_after <= 0:
            raise ValueError("withdraw_after must be positive")
        future: asyncio.Future[None] = self._future()
        entry = _Append(item, future)
        self._queue.put(entry)
        if withdraw_after is None:
            await future
            return
        self._arm(entry, withdraw_after)
        try:
            await future
        finally:
            if entry.timer is not None:
                entry.timer.cancel()

    def _arm(self, entry: _Append[Item], after: float) -> None:
        assert self._loop is not None
        deadline = self._loop.time() + after
        entry.timer = self._loop.call_at(deadline, self._withdraw, entry, after, deadline)

    def _withdraw(self, entry: _Append[Item], after: float, deadline: float) -> None:
        assert self._loop is not None
        if self._loop.time() - deadline > max(after / 2, LOOP_LATE):
            # The loop itself ran late (a paused process, a swamped loop): it cannot tell whether the
            # writer kept up, so the writer gets a fresh `after`, judged by a loop that is on time.
            self._arm(entry, after)
            return
        with self._claims:
            if entry.state != _QUEUED:
                return  # the thread has it: its commit settles the future
            entry.state = _WITHDRAWN
        if not entry.future.done():
            entry.future.set_exception(WriterStalled())

    async def stop(self) -> None:
        """Finish the calls already queued, then end the thread."""
        if self._thread is None:
            return
        await self.call(lambda: None)
        self._queue.put(_Stop())
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    def _future(self) -> asyncio.Future[Any]:
        assert self._thread is not None and self._loop is not None, "writer not started"
        return self._loop.create_future()

    def _publish(self, settled: Settled) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            self._loop.call_soon_threadsafe(_settle, settled)

    def _run(self) -> None:
        pending: deque[_Call | _Append[Item] | _Stop] = deque()
        while True:
            if not pending:
                self._busy_since = None
                pending.append(self._queue.get())
            self._busy_since = time.monotonic()
            while True:  # take everything already waiting: that is the group
                try:
                    pending.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            job = pending[0]
            if isinstance(job, _Stop):
                self._busy_since = None
                return
            if isinstance(job, _Call):
                pending.popleft()
                settled: Settled
                try:
                    settled = [(job.future, job.fn(), None)]
                except BaseException as error:  # handed to the awaiting coroutine
                    settled = [(job.future, None, error)]
                self._busy_since = None  # done: whoever the answer wakes must not see a stall
                self._publish(settled)
                continue
            group: list[_Append[Item]] = []
            while pending and isinstance(pending[0], _Append) and len(group) < self._max_group:
                group.append(pending.popleft())  # type: ignore[arg-type]
            with self._claims:
                for append in group:
                    if append.state == _QUEUED:
                        append.state = _TAKEN
            group = [append for append in group if append.state == _TAKEN]
            if not group:
                continue
            try:
                outcomes = self._commit_group([append.item for append in group])
            except Exception as error:  # a bug: fail these appends, keep the thread alive
                outcomes = [error] * len(group)
            self.groups += 1
            self._busy_since = None
            self._publish([(append.future, None, error) for append, error in zip(group, outcomes, strict=True)])
