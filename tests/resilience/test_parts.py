"""Policies, clocks, classification and logging hooks."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import structlog
from structlog.testing import capture_logs

from resilience import (
    ConfigurationError,
    Event,
    Policy,
    SystemClock,
    Timeouts,
    classify_httpx,
    is_idempotent,
    log_event,
    parse_retry_after,
)
from resilience.testing import FakeClock
from tests.resilience.conftest import until


@pytest.mark.parametrize(
    "bad",
    [
        {"deadline": 0},
        {"attempts": 0},
        {"backoff_initial": 0},
        {"backoff_initial": 1, "backoff_max": 0.5},
        {"retry_after_max": -1},
        {"breaker_failures": 0},
        {"breaker_mode": "sometimes"},
        {"breaker_window": 0},
        {"breaker_min_calls": 0},
        {"breaker_failure_rate": 0},
        {"breaker_failure_rate": 1.5},
        {"breaker_reset": 0},
        {"budget_ratio": 1.5},
        {"budget_reserve": -1},
        {"budget_refill_per_second": -1},
        {"bulkhead": 0},
        {"hedge_delay": 0},
    ],
)
def test_impossible_policies_are_refused(bad):
    with pytest.raises(ConfigurationError):
        Policy(**bad)


def test_timeouts_are_validated():
    with pytest.raises(ValueError):
        Timeouts(read=0)


async def test_system_clock_moves_sleeps_and_times_out():
    clock = SystemClock()
    before = clock.monotonic()
    await clock.sleep(0.001)
    assert clock.monotonic() > before
    with pytest.raises(TimeoutError):
        async with clock.timeout(0.001):
            await asyncio.Event().wait()
    fired = asyncio.Event()
    clock.call_later(0.001, fired.set)
    await fired.wait()


async def test_fake_clock_timers_run_once_due_and_never_once_cancelled():
    clock = FakeClock()
    ran: list[str] = []
    clock.call_later(1.0, lambda: ran.append("later"))
    clock.call_later(0, lambda: ran.append("now"))
    clock.call_later(0.5, lambda: ran.append("cancelled")).cancel()
    due_then_cancelled = clock.call_later(0.5, lambda: ran.append("cancelled after it was due"))
    await until(lambda: ran == ["now"])
    clock.advance(0.5)
    due_then_cancelled.cancel()
    clock.advance(0.5)
    await until(lambda: ran == ["now", "later"])
    assert clock.pending_timeouts == 0


async def test_fake_clock_timeouts_fire_only_when_time_is_moved_past_them():
    clock = FakeClock()
    body = asyncio.create_task(_wait_forever_within(clock, 1.0))
    await until(lambda: clock.pending_timeouts == 1)
    clock.advance(0.999)
    for _ in range(10):
        await asyncio.sleep(0)  # give a wrongly fired timeout every chance to show
    assert not body.done()
    await clock.sleep(0.001)
    with pytest.raises(TimeoutError):
        await body
    assert clock.pending_timeouts == 0


async def test_fake_clock_timeouts_that_end_in_time_or_never_expire_change_nothing():
    clock = FakeClock()
    async with clock.timeout(1.0):
        clock.advance(0.5)
    async with clock.timeout(None):
        clock.advance(3600)
    assert clock.pending_timeouts == 0
    with pytest.raises(TimeoutError):
        async with clock.timeout(0):
            await asyncio.sleep(0)


async def test_a_fake_timeout_fired_while_its_body_raises_lets_the_error_through():
    clock = FakeClock()
    with pytest.raises(KeyError):
        async with clock.timeout(1.0):
            clock.advance(2.0)  # fires, but the body leaves before the loop cancels it
            raise KeyError("the body's own error")


async def _wait_forever_within(clock: FakeClock, seconds: float) -> None:
    async with clock.timeout(seconds):
        await asyncio.Event().wait()


def test_retry_after_parsing():
    assert parse_retry_after(None) is None
    assert parse_retry_after(" 7 ") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 -0000") is None  # "-0000" means unknown zone
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_classification_of_everything_else():
    assert classify_httpx(TimeoutError()).reason == "timeout"
    assert classify_httpx(httpx.DecodingError("bad gzip")).reason == "invalid_response"
    assert classify_httpx(ValueError("bug")) is None


def test_idempotency_rules():
    assert is_idempotent(httpx.Request("GET", "http://x"))
    assert is_idempotent(httpx.Request("PUT", "http://x"))
    assert not is_idempotent(httpx.Request("POST", "http://x"))
    assert is_idempotent(httpx.Request("POST", "http://x", headers={"Idempotency-Key": "k"}))


def test_log_event_levels():
    structlog.reset_defaults()  # an app started by an earlier test may have filtered debug out
    with capture_logs() as logs:
        log_event(Event("breaker_opened", "t", {"state": "open"}))
        log_event(Event("retry_scheduled", "t", {}))
        log_event(Event("hedge_started", "t", {}))
        log_event(Event("fallback", "t", {"reason": "timeout"}))
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("breaker_opened", "warning"),
        ("retry_scheduled", "debug"),
        ("hedge_started", "debug"),
        ("fallback", "info"),
    ]
    assert logs[0]["target"] == "t"
