"""Hedging: a slow copy is joined, not cut; the first answer wins; every copy obeys the other layers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx
import pytest

from resilience import Fallback, Ok, Timeouts, send
from tests.resilience.conftest import Harness, until

Reply = Callable[[], Awaitable[httpx.Response]]
HEDGED = {"hedge_delay": 0.1, "deadline": 0.5}


def scripted(h: Harness, *replies: Reply) -> list[str]:
    """Request n gets replies[n]; returns a log of how each copy ended."""
    ended: list[str] = []
    count = 0

    async def handler(_: httpx.Request) -> httpx.Response:
        nonlocal count
        index, count = count, count + 1
        try:
            response = await replies[index]()
        except asyncio.CancelledError:
            ended.append(f"{index}:cancelled")
            raise
        ended.append(f"{index}:{response.status_code}")
        return response

    h.handler = handler
    return ended


def answer(status: int = 200, after: asyncio.Event | None = None, **kw: object) -> Reply:
    async def reply() -> httpx.Response:
        if after is not None:
            await after.wait()
        return httpx.Response(status, **kw)  # type: ignore[arg-type]

    return reply


def never() -> Reply:
    return answer(after=asyncio.Event())


async def test_a_slow_copy_is_joined_by_a_hedge_and_the_first_answer_wins(make_harness):
    h = make_harness(budget_refill_per_second=0, **HEDGED)
    ended = scripted(h, never(), answer(200))
    call = await h.start()
    h.clock.advance(0.099)
    await until(lambda: h.clock.pending_timeouts == 2)  # the first copy's, and the hedge delay's
    assert len(h.requests) == 1, "no hedge before the delay"
    h.clock.advance(0.001)
    outcome = await call
    assert isinstance(outcome, Ok) and outcome.attempts == 2
    assert ended == ["1:200", "0:cancelled"]
    assert "hedge_started" in h.names()
    assert h.pipeline.budget.tokens == pytest.approx(10 - 1), "the hedge spent a retry token"
    assert h.pipeline.breaker.window_calls == 1, "the cancelled copy counts for nothing"
    assert h.requests[0] is not h.requests[1], "each copy sends a request of its own"


async def test_the_first_copy_still_wins_if_it_answers_first(make_harness):
    h = make_harness(**HEDGED)
    first = asyncio.Event()
    ended = scripted(h, answer(200, after=first), never())
    call = await h.start()
    h.clock.advance(0.1)
    await until(lambda: len(h.requests) == 2)
    first.set()
    outcome = await call
    assert isinstance(outcome, Ok) and outcome.attempts == 2
    assert ended == ["0:200", "1:cancelled"]


async def test_a_slow_peer_is_not_cut_at_the_read_timeout_when_hedging(make_harness):
    # Every answer takes 0.3 s: a 0.2 s read timeout fails every attempt, a hedged call does not.
    h = make_harness(attempts=2, timeouts=Timeouts(read=0.2), **HEDGED)
    slow = asyncio.Event()
    ended = scripted(h, answer(200, after=slow), answer(200, after=slow))
    call = await h.start()
    assert h.requests[0].extensions["timeout"]["read"] == pytest.approx(0.5)
    h.clock.advance(0.1)
    await until(lambda: len(h.requests) == 2)
    assert h.requests[1].extensions["timeout"]["read"] == pytest.approx(0.4)
    h.clock.advance(0.2)  # 0.3 s after the first copy started
    slow.set()
    outcome = await call
    assert isinstance(outcome, Ok)
    assert ended[0] == "0:200"


async def test_a_fast_failure_is_retried_after_a_backoff(make_harness):
    h = make_harness(**HEDGED)
    scripted(h, answer(503), answer(200))
    outcome = await h.get()
    assert isinstance(outcome, Ok) and outcome.attempts == 2
    assert h.names() == ["attempt_failed", "retry_scheduled"]
    assert len(h.clock.sleeps) == 1 and 0 <= h.clock.sleeps[0] <= 0.025


async def test_a_failed_hedge_does_not_end_the_call_while_another_copy_runs(make_harness):
    h = make_harness(attempts=2, **HEDGED)
    first = asyncio.Event()
    ended = scripted(h, answer(200, after=first), answer(503))
    call = await h.start()
    h.clock.advance(0.1)
    await until(lambda: ended == ["1:503"])
    first.set()
    outcome = await call
    assert isinstance(outcome, Ok) and outcome.attempts == 2
    assert ended == ["1:503", "0:200"]


async def test_without_budget_there_is_no_hedge_and_the_first_copy_keeps_its_time(make_harness):
    h = make_harness(budget_reserve=0, budget_ratio=0, budget_refill_per_second=0, **HEDGED)
    late = asyncio.Event()
    scripted(h, answer(200, after=late))
    call = await h.start()
    h.clock.advance(0.1)
    await until(lambda: "hedge_skipped" in h.names())
    assert "budget_exhausted" in h.names()
    h.clock.advance(0.3)  # past a 0.2 s read timeout: the only copy may use the whole deadline
    late.set()
    outcome = await call
    assert isinstance(outcome, Ok) and outcome.attempts == 1
    assert len(h.requests) == 1


async def test_copies_that_all_time_out_end_at_the_deadline(make_harness):
    h = make_harness(**HEDGED)
    scripted(h, never(), never(), never())
    call = await h.start()
    for copies in (2, 3):
        h.clock.advance(0.1)
        await until(lambda n=copies: len(h.requests) == n)
    h.clock.advance(0.3)
    outcome = await call
    assert outcome.reason == "timeout" and outcome.attempts == 3
    assert h.clock.now - 1000.0 == pytest.approx(0.5)


async def test_no_copy_starts_past_the_deadline(make_harness):
    h = make_harness(attempts=10, **HEDGED)
    scripted(h, *[never()] * 10)
    call = await h.start()
    h.clock.advance(0.5)  # every copy times out, and the hedge timer fires, at the deadline
    outcome = await call
    assert outcome.reason == "deadline" and outcome.attempts == 1
    assert "hedge_started" not in h.names()


async def test_a_retry_after_beyond_the_cap_stops_new_copies(make_harness):
    h = make_harness(retry_after_max=0.25, **HEDGED)
    scripted(h, answer(503, headers={"Retry-After": "30"}))
    outcome = await h.get()
    assert outcome.reason == "status" and outcome.status == 503 and outcome.attempts == 1


async def test_a_non_transient_answer_ends_the_call_at_once(make_harness):
    h = make_harness(**HEDGED)
    ended = scripted(h, never(), answer(400))
    call = await h.start()
    h.clock.advance(0.1)
    outcome = await call
    assert outcome.reason == "status" and outcome.status == 400 and outcome.attempts == 2
    assert ended == ["1:400", "0:cancelled"]


async def test_an_open_breaker_rejects_before_any_copy(make_harness):
    h = make_harness(breaker_min_calls=1, **HEDGED)
    scripted(h, answer(503), answer(503), answer(503))
    await h.get()
    assert h.pipeline.breaker.state == "open"
    assert await h.get() == Fallback("breaker_open")


async def test_a_breaker_that_opens_during_the_call_stops_the_retries(make_harness):
    h = make_harness(breaker_min_calls=1, **HEDGED)
    scripted(h, answer(503), answer(200))
    outcome = await h.get()
    assert outcome.reason == "breaker_open" and outcome.attempts == 1
    assert len(h.requests) == 1


async def test_a_half_open_breaker_lets_only_the_probe_out(make_harness):
    h = make_harness(breaker_min_calls=1, breaker_reset=1.0, **HEDGED)
    answered = asyncio.Event()
    scripted(h, answer(503), answer(200, after=answered))
    await h.get()
    h.clock.advance(1.0)
    call = await h.start()
    h.clock.advance(0.1)
    await until(lambda: "hedge_skipped" in h.names())
    answered.set()
    outcome = await call
    assert isinstance(outcome, Ok) and outcome.attempts == 1
    assert len(h.requests) == 2 and h.pipeline.breaker.state == "closed"


async def test_a_retry_refused_by_someone_elses_probe_falls_back(make_harness):
    h = make_harness(breaker_min_calls=1, breaker_reset=1.0, hedge_delay=0.1, deadline=5.0)
    breaker = h.pipeline.breaker

    async def others_open_the_breaker_and_probe() -> httpx.Response:
        breaker.record_failure("pass")  # another call's failure opens it
        h.clock.advance(1.0)
        assert breaker.admit() == "probe"  # and another call holds the probe
        return httpx.Response(503)

    scripted(h, others_open_the_breaker_and_probe)
    outcome = await h.get()
    assert outcome.reason == "breaker_open" and outcome.attempts == 1


async def test_a_bug_in_a_copy_propagates_and_the_other_copy_is_cancelled(make_harness):
    h = make_harness(**HEDGED)

    async def bug() -> httpx.Response:
        raise KeyError("bug")

    ended = scripted(h, never(), bug)
    call = await h.start()
    h.clock.advance(0.1)
    with pytest.raises(KeyError):
        await call
    assert ended == ["0:cancelled"]
    assert h.pipeline.bulkhead.in_flight == 0


async def test_cancelling_the_call_cancels_every_copy(make_harness):
    h = make_harness(**HEDGED)
    ended = scripted(h, never(), never(), never())
    call = await h.start()
    for copies in (2, 3):
        h.clock.advance(0.1)
        await until(lambda n=copies: len(h.requests) == n)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert sorted(ended) == ["0:cancelled", "1:cancelled", "2:cancelled"]
    assert h.pipeline.bulkhead.in_flight == 0 and h.pipeline.breaker.window_calls == 0


async def test_requests_that_cannot_be_repeated_are_never_hedged(make_harness):
    h = make_harness(**HEDGED)
    late = asyncio.Event()
    scripted(h, answer(200, after=late))
    call = asyncio.create_task(send(h.pipeline, h.client, h.client.build_request("POST", "/x", json={})))
    await until(lambda: len(h.requests) == 1)
    h.clock.advance(0.3)
    late.set()
    assert isinstance(await call, Ok)
    assert len(h.requests) == 1 and "hedge_started" not in h.names()
