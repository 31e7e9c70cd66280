"""Time sources: the real one, and the protocol tests implement (see `resilience.testing`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol


class Timer(Protocol):
    """A scheduled callback that can still be called off."""

    def cancel(self) -> None: ...


class TimerClock(Protocol):
    """A reading and a timer: all that a component which never sleeps needs of time (admission control)."""

    def monotonic(self) -> float: ...

    def call_later(self, seconds: float, callback: Callable[[], object]) -> Timer: ...


class Clock(TimerClock, Protocol):
    """What the pipeline needs of time: a reading, a sleep, a timeout and a timer.

    `timeout(seconds)` is an async context manager that cancels its body once `seconds` have
    passed on this clock and then raises `TimeoutError`, as `asyncio.timeout` does;
    `call_later(seconds, callback)` runs `callback` on the event loop after `seconds`. Every
    wait the pipeline makes (backoff, per-attempt timeout, hedge delay) goes through the clock,
    so a fake clock drives all of them.
    """

    async def sleep(self, seconds: float) -> None: ...

    def timeout(self, seconds: float | None) -> AbstractAsyncContextManager[object]: ...


class SystemClock:
    """`time.monotonic`, `asyncio.sleep`, `asyncio.timeout` and the event loop's `call_later`."""

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def timeout(self, seconds: float | None) -> AbstractAsyncContextManager[object]:
        return asyncio.timeout(seconds)

    def call_later(self, seconds: float, callback: Callable[[], object]) -> Timer:
        return asyncio.get_running_loop().call_later(seconds, callback)
