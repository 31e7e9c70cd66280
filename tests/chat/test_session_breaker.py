"""The session store's breaker: a short stall costs the turns it stalled, a dead store is left alone.

The stall runs on the real PostgreSQL server behind a fault proxy; the breaker's arithmetic runs
on a fake clock.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from urllib.parse import urlsplit

import pytest

from chat_service.core.config import SessionBreakerSettings
from chat_service.sessions import StoreUnavailable
from chat_service.sessions._guarded import DEFAULT_BREAKER, Guarded
from load_tests.faultproxy import Fault, FaultProxy
from load_tests.processes import free_port
from resilience.testing import FakeClock

from ..conftest import postgres_schema
from .test_sessions import say


def _failures(metrics: str) -> dict[str, float]:
    """`chat_session_store_failures_total` of the calls through the breaker, by reason (not start-up's)."""
    totals: dict[str, float] = {}
    pattern = r'chat_session_store_failures_total\{operation="(\w+)",reason="(\w+)"\} (\S+)'
    for operation, reason, count in re.findall(pattern, metrics):
        if operation != "start":
            totals[reason] = totals.get(reason, 0.0) + float(count)
    return totals


async def test_a_short_stall_of_the_store_costs_the_turns_it_stalled_not_the_history_after_it(chat_with, analytics_transport):
    async with postgres_schema() as url:
        target = urlsplit(url)
        proxy = await FaultProxy((target.hostname or "127.0.0.1", target.port or 5432)).start()
        try:
            proxied = url.replace(f"{target.hostname}:{target.port}", f"127.0.0.1:{proxy.port}", 1)
            session = f"s-{uuid.uuid4().hex[:8]}"
            async with chat_with(analytics_transport, sessions_url=proxied, session_timeout=1.0) as chat:
                for text in ("one", "two"):
                    assert (await chat.post("/chat/", json=say("alice", text, session))).status_code == 200
                # Each of these chats' first store call times out; the healthy calls around the stall
                # have a second each, for a starved machine (a 0.64 s call was seen in CI).
                proxy.set(Fault("latency", 1.5))
                stalled = await asyncio.gather(
                    *(chat.post("/chat/", json=say("alice", "stalled", f"{session}-{i}")) for i in range(4))
                )  # together, as calls stall on a busy worker
                proxy.set(Fault("pass"))
                during = _failures((await chat.get("/metrics")).text)
                after = await chat.post("/chat/", json=say("alice", "three", session))
                listed = await chat.get(f"/sessions/{session}", params={"user_id": "alice"})
                lost = [await chat.get(f"/sessions/{session}-{i}", params={"user_id": "alice"}) for i in range(4)]
                metrics = (await chat.get("/metrics")).text
        finally:
            await proxy.stop()
    assert [r.status_code for r in stalled] == [200] * 4  # answered without history
    assert all("message 1 of this conversation" in r.json()["reply"] for r in stalled)
    # The stall failed more calls in a row than the 3 that opened the breaker before, fewer than 10:
    assert 4 <= during.get("timeout", 0) < 10 and "breaker_open" not in during
    assert "This is message 3 of this conversation." in after.json()["reply"]  # the history is back at once
    assert listed.status_code == 200  # an open breaker would answer 503
    assert [t["text"] for t in listed.json()["turns"]] == ["one", "two", "three"]
    assert [r.status_code for r in lost] == [404] * 4  # the stalled turns were not stored
    assert "breaker_open" not in _failures(metrics)
    assert 'chat_breaker_state{target="sessions"} 0.0' in metrics


async def test_consecutive_counting_is_a_setting(chat_with, analytics_transport):
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    breaker = {"mode": "consecutive", "failures": 2}
    async with chat_with(analytics_transport, sessions_url=dead, session_timeout=0.5, session_breaker=breaker) as chat:
        for i in range(4):
            assert (await chat.post("/chat/", json=say("alice", f"m{i}"))).status_code == 200
        failures = _failures((await chat.get("/metrics")).text)
    assert failures.pop("breaker_open") == 2  # two chats failed the store, then the breaker spared it
    assert sum(failures.values()) == 2


class _Store:
    """A store call that succeeds or fails on demand, and counts the calls that reached it."""

    def __init__(self) -> None:
        self.calls = 0

    def call(self, *, fail: bool):  # type: ignore[no-untyped-def]
        async def make() -> str:
            self.calls += 1
            if fail:
                raise ConnectionResetError("store gone")
            return "ok"

        return make


def _guarded(clock: FakeClock) -> Guarded:
    return Guarded(timeout=1.0, on_failure=lambda operation, reason: None, emit=lambda event: None, clock=clock)


async def _run(guarded: Guarded, store: _Store, *, fail: bool) -> str:
    try:
        return await guarded.call("open", store.call(fail=fail))
    except StoreUnavailable as unavailable:
        return unavailable.reason


async def test_nine_failures_in_a_row_among_successes_leave_the_store_in_use() -> None:
    clock, store = FakeClock(), _Store()
    guarded = _guarded(clock)
    for _ in range(20):
        assert await _run(guarded, store, fail=False) == "ok"
    for _ in range(9):
        assert await _run(guarded, store, fail=True) == "ConnectionResetError"
    assert await _run(guarded, store, fail=False) == "ok"
    assert guarded.breaker.state == "closed" and store.calls == 30


async def test_a_store_that_keeps_failing_is_left_alone_after_ten_failures_then_probed() -> None:
    clock, store = FakeClock(), _Store()
    guarded = _guarded(clock)
    for _ in range(10):
        await _run(guarded, store, fail=True)
    assert guarded.breaker.state == "open"
    assert await _run(guarded, store, fail=True) == "breaker_open" and store.calls == 10  # not called
    clock.advance(5.0)
    assert await _run(guarded, store, fail=False) == "ok"  # the probe finds it back
    assert guarded.breaker.state == "closed"


@pytest.mark.parametrize(("failing_every", "opens"), [(2, True), (3, False)])
async def test_half_the_calls_failing_opens_it_and_a_third_does_not(failing_every: int, opens: bool) -> None:
    clock, store = FakeClock(), _Store()
    guarded = _guarded(clock)
    for n in range(40):
        if guarded.breaker.state == "open":
            break
        await _run(guarded, store, fail=n % failing_every == 0)
        clock.advance(0.1)
    assert (guarded.breaker.state == "open") is opens


def test_the_settings_defaults_are_the_breakers_defaults() -> None:
    assert SessionBreakerSettings().to_options() == DEFAULT_BREAKER
    with pytest.raises(ValueError, match="finite"):
        SessionBreakerSettings(reset=float("inf"))
