"""An open-loop chat load: requests leave at a fixed rate whatever the answers, for a bounded time.

Closed-loop load slows down when the server does, and so hides an outage; open-loop load keeps
arriving like real users, so the timeline of statuses shows exactly when chat refused and when it
was back. Every reply is kept (time sent, status, user), for loss checks against analytics.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import httpx

from servicekit.transport import AiohttpTransport


@dataclass(frozen=True, slots=True)
class Sent:
    at: float  # time.monotonic() when it was sent
    done: float  # and when its answer (or error) came back
    user: str
    status: int  # 0: no answer (connection error or timeout)
    retry_after: str | None


@dataclass
class OpenLoop:
    """`rate` chats a second over `users` users, until `stop()` or `seconds` pass."""

    url: str
    rate: float
    users: int = 20
    prefix: str = "openloop"
    timeout: float = 10.0
    replies: list[Sent] = field(default_factory=list)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self, seconds: float) -> list[Sent]:
        # aiohttp's pool, not httpx's: under a backlog httpx's pool rescans every waiting request
        # on each change, and the generator itself became the bottleneck on a busy machine.
        transport = AiohttpTransport(max_connections=200)
        async with httpx.AsyncClient(base_url=self.url, timeout=self.timeout, transport=transport) as client:
            in_flight: set[asyncio.Task[None]] = set()
            started = time.monotonic()
            for n in range(int(seconds * self.rate)):
                delay = started + n / self.rate - time.monotonic()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), delay)
                if self._stopping.is_set():
                    break
                task = asyncio.create_task(self._one(client, f"{self.prefix}-{n % self.users}"))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            if in_flight:
                await asyncio.wait(in_flight)
        return self.replies

    async def _one(self, client: httpx.AsyncClient, user: str) -> None:
        sent = time.monotonic()
        try:
            response = await client.post("/chat/", json={"user_id": user, "text": "Hello!"})
        except httpx.HTTPError:
            self.replies.append(Sent(sent, time.monotonic(), user, 0, None))
            return
        self.replies.append(Sent(sent, time.monotonic(), user, response.status_code, response.headers.get("Retry-After")))


def ok_by_user(replies: list[Sent]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for reply in replies:
        if reply.status == 200:
            counts[reply.user] = counts.get(reply.user, 0) + 1
    return counts
