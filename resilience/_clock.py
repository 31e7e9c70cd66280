"""Time sources: the real one, and the protocol tests implement (see `resilience.testing`)."""

from __future__ import annotations

import asyncio
import time
from contextlib import AbstractAsyncContextManager
from typing import Protocol


class Clock(Protocol):
    """What the pipeline needs of time: a monotonic reading, an awaitable sleep and a timeout.

    `timeout(seconds)` is an async context manager that cancels its body once `seconds` have
    passed on this clock and then raises `TimeoutError`, as `asyncio.timeout` does. Every wait
    the pipeline makes (backoff, per-attempt timeout, hedge delay) goes through the clock, so a
    fake clock drives all of them.
    """

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...

    def timeout(self, seconds: float | None) -> AbstractAsyncContextManager[object]: ...


class SystemClock:
    """`time.monotonic`, `asyncio.sleep` and `asyncio.timeout`."""

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def timeout(self, seconds: float | None) -> AbstractAsyncContextManager[object]:
        return asyncio.timeout(seconds)
