"""Policies, clocks, classification and logging hooks."""

from __future__ import annotations

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


@pytest.mark.parametrize(
    "bad",
    [
        {"deadline": 0},
        {"attempts": 0},
        {"backoff_initial": 0},
        {"backoff_initial": 1, "backoff_max": 0.5},
        {"retry_after_max": -1},
        {"breaker_failures": 0},
        {"breaker_reset": 0},
        {"budget_ratio": 1.5},
        {"budget_reserve": -1},
        {"budget_refill_per_second": -1},
        {"bulkhead": 0},
    ],
)
def test_impossible_policies_are_refused(bad):
    with pytest.raises(ConfigurationError):
        Policy(**bad)


def test_timeouts_are_validated():
    with pytest.raises(ValueError):
        Timeouts(read=0)


async def test_system_clock_moves_and_sleeps():
    clock = SystemClock()
    before = clock.monotonic()
    await clock.sleep(0.001)
    assert clock.monotonic() > before


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
        log_event(Event("fallback", "t", {"reason": "timeout"}))
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("breaker_opened", "warning"),
        ("retry_scheduled", "debug"),
        ("fallback", "info"),
    ]
    assert logs[0]["target"] == "t"
