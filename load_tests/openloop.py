"""An open-loop chat load in the caller's event loop: requests leave at a fixed rate whatever the answers.

Closed-loop load slows down when the server does, and so hides an outage; open-loop load keeps
arriving like real users, so the timeline of statuses shows exactly when chat refused and when it
was back. Every reply is kept (time sent, status, user), for loss checks against analytics.

It runs on `openloop_raw`'s connection pool (the one open-loop HTTP client of the project), in
the caller's loop and stoppable at any time, for tests that drive load while they act on the
services; `openloop_raw` run as a process is for load the size of the machine (`bench_overload`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .openloop_raw import Pool, Record, chat_payloads


@dataclass(frozen=True, slots=True)
class Sent:
    at: float  # time.monotonic() when it was sent
    done: float  # and when its answer (or error) came back
    user: str
    status: int  # 0: no answer (connection error, timeout, or no connection to spare)
    retry_after: str | None


@dataclass
class OpenLoop:
    """`rate` chats a second over `users` users, until `stop()` or `seconds` pass."""

    url: str
    rate: float
    users: int = 20
    prefix: str = "openloop"
    timeout: float = 10.0
    max_connections: int = 1000
    replies: list[Sent] = field(default_factory=list)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self, seconds: float) -> list[Sent]:
        parts = urlsplit(self.url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        users = [f"{self.prefix}-{n}" for n in range(self.users)]
        payloads = chat_payloads(f"{host}:{port}", users, text="Hello!")
        pool = Pool(host, port, self.max_connections)
        answered = asyncio.Event()
        sent = 0
        try:
            started = time.monotonic()
            for n in range(int(seconds * self.rate)):
                delay = started + n / self.rate - time.monotonic()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), delay)
                if self._stopping.is_set():
                    break
                pool.submit(payloads[n % self.users], self._recorder(users[n % self.users], answered), self.timeout)
                sent += 1
            # Every request ends within its timeout (a timed-out one is recorded as 0).
            async with asyncio.timeout(self.timeout + 1):
                while len(self.replies) < sent:
                    answered.clear()
                    await answered.wait()
        finally:
            pool.close()
        return self.replies

    def _recorder(self, user: str, answered: asyncio.Event) -> Record:
        def record(sent_at: float, latency: float, status: int, retry_after: bytes | None) -> None:
            hint = None if retry_after is None else retry_after.decode()
            self.replies.append(Sent(sent_at, sent_at + latency, user, max(status, 0), hint))
            answered.set()

        return record


def ok_by_user(replies: list[Sent]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for reply in replies:
        if reply.status == 200:
            counts[reply.user] = counts.get(reply.user, 0) + 1
    return counts
