from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from resilience import Event, Pipeline, Policy, classify_httpx
from resilience.testing import FakeClock

Handler = Callable[[httpx.Request], httpx.Response]


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
            if hasattr(result, "__await__"):
                result = await result  # type: ignore[misc]
            return result

        self.client = httpx.AsyncClient(transport=httpx.MockTransport(dispatch), base_url="http://peer")

    def names(self) -> list[str]:
        return [e.name for e in self.events]


@pytest.fixture
def make_harness() -> Callable[..., Harness]:
    def make(**policy: object) -> Harness:
        return Harness(Policy(**policy))  # type: ignore[arg-type]

    return make
