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


@dataclass(slots=True)
class _Append(Generic[Item]):
    item: Item
    future: asyncio.Future[None]


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

    @property
    def running(self) -> bool:
        return self._thread is not None

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

    async def append(self, item: Item) -> None:
        """Commit `item` together with whatever other appends are waiting."""
        future: asyncio.Future[None] = self._future()
        self._queue.put(_Append(item, future))
        await future

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
                pending.append(self._queue.get())
            while True:  # take everything already waiting: that is the group
                try:
                    pending.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            job = pending[0]
            if isinstance(job, _Stop):
                return
            if isinstance(job, _Call):
                pending.popleft()
                try:
                    self._publish([(job.future, job.fn(), None)])
                except BaseException as error:  # handed to the awaiting coroutine
                    self._publish([(job.future, None, error)])
                continue
            group: list[_Append[Item]] = []
            while pending and isinstance(pending[0], _Append) and len(group) < self._max_group:
                group.append(pending.popleft())  # type: ignore[arg-type]
            try:
                outcomes = self._commit_group([append.item for append in group])
            except Exception as error:  # a bug: fail these appends, keep the thread alive
                outcomes = [error] * len(group)
            self.groups += 1
            self._publish([(append.future, None, error) for append, error in zip(group, outcomes, strict=True)])
