from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import httpx
import pytest

from resilience import Event, Outcome, Pipeline, Policy, classify_httpx, send
from resilience.testing import FakeClock

Handler = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Let other tasks run until `condition` holds (fails after `timeout` real seconds)."""
    limit = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < limit, "condition not reached in time"
        await asyncio.sleep(0)


class Harness:
    """A pipeline on a fake clock in front of a MockTransport whose handler tests swap freely."""

    def __init__(self, policy: Policy) -> None:
        self.clock = FakeClock()
        self.events: list[Event] = []
        self.requests: list[httpx.Request] = []
        self.handler: Handler = lambda _: httpx.Response(200, json={"ok": True})
        self.pipeline = Pipeline("peer", policy, on=classify_httpx, clock=self.clock, hooks=[self.events.append])

        async def dispatch(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            result = self.handler(request)
            if not isinstance(result, httpx.Response):
                result = await result
            return result

        self.client = httpx.AsyncClient(transport=httpx.MockTransport(dispatch), base_url="http://peer")

    def names(self) -> list[str]:
        return [e.name for e in self.events]

    def transitions(self) -> list[str]:
        return [e.fields["state"] for e in self.events if e.name.startswith("breaker_")]

    async def get(self, path: str = "/x", **kw: object) -> Outcome[httpx.Response]:
        return await send(self.pipeline, self.client, self.client.build_request("GET", path, **kw))  # type: ignore[arg-type]

    async def start(self, path: str = "/x") -> asyncio.Task[Outcome[httpx.Response]]:
        """Start a GET in a task and return it once its request has reached the peer."""
        sent = len(self.requests)
        task = asyncio.create_task(self.get(path))
        await until(lambda: len(self.requests) > sent or task.done())
        return task


@pytest.fixture
def make_harness() -> Callable[..., Harness]:
    def make(**policy: object) -> Harness:
        return Harness(Policy(**policy))  # type: ignore[arg-type]

    return make
