"""The retry budget and the bulkhead: an outage never multiplies load, and nothing queues."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from resilience import Fallback, Ok, RetryBudget
from resilience.testing import FakeClock
from tests.fakes.handlers import hang
from tests.resilience.conftest import until


async def test_budget_caps_retries_under_a_total_outage(make_harness):
    h = make_harness(attempts=3, budget_ratio=0.1, budget_reserve=10, breaker_min_calls=10**9)
    h.handler = lambda _: httpx.Response(503)
    calls = 1000
    outcomes = [await h.get() for _ in range(calls)]
    attempts = len(h.requests)
    assert attempts <= calls * 1.1 + 10 + 1, attempts
    assert attempts > calls, "some retries are still allowed"
    assert sum(o.reason == "budget_exhausted" for o in outcomes) > 900
    assert "budget_exhausted" in h.names()


def test_budget_refills_with_time_up_to_its_capacity():
    clock = FakeClock()
    budget = RetryBudget(ratio=0.5, reserve=2, refill_per_second=1.0, clock=clock)
    assert budget.try_withdraw() and budget.try_withdraw()
    assert not budget.try_withdraw()
    budget.deposit()
    budget.deposit()
    assert budget.try_withdraw()
    clock.advance(100)
    assert budget.tokens == 2.0


def test_budget_without_refill_stays_empty():
    clock = FakeClock()
    budget = RetryBudget(ratio=0.0, reserve=0, refill_per_second=0.0, clock=clock)
    clock.advance(10)
    assert not budget.try_withdraw()


async def test_a_full_bulkhead_answers_at_once(make_harness):
    h = make_harness(bulkhead=2)
    gate = asyncio.Event()

    async def held(_: httpx.Request) -> httpx.Response:
        await gate.wait()
        return httpx.Response(200)

    h.handler = held
    running = [await h.start() for _ in range(2)]
    assert await h.get() == Fallback("bulkhead_full")
    assert h.pipeline.bulkhead.in_flight == 2 and h.pipeline.bulkhead.limit == 2
    gate.set()
    assert all(isinstance(o, Ok) for o in await asyncio.gather(*running))
    assert h.pipeline.bulkhead.in_flight == 0
    assert isinstance(await h.get(), Ok)
    assert "bulkhead_rejected" in h.names()


SCARCE = {"budget_reserve": 1, "budget_ratio": 0, "budget_refill_per_second": 0}


async def test_the_retry_a_cut_attempt_makes_room_for_is_paid_when_it_starts(make_harness):
    # One token for two concurrent calls to a slow peer: the first call's first attempt takes it
    # (and is cut at 0.2 s, its retry guaranteed); the second finds none, so its only attempt
    # may use the whole deadline instead of being cut for a retry the budget would refuse.
    h = make_harness(backoff_initial=0.02, backoff_max=0.02, **SCARCE)
    answer = asyncio.Event()

    async def slow(_: httpx.Request) -> httpx.Response:
        await answer.wait()
        return httpx.Response(200)

    h.handler = slow
    first = await h.start("/first")
    second = await h.start("/second")
    assert [r.extensions["timeout"]["read"] for r in h.requests] == [0.2, 0.5]
    h.clock.advance(0.2)
    await until(lambda: len(h.requests) == 3)
    answer.set()
    assert [o.attempts for o in await asyncio.gather(first, second)] == [2, 1]
    assert "budget_exhausted" not in h.names()
    assert h.pipeline.budget.tokens == 0


@pytest.mark.parametrize(("status", "spent"), [(200, 0), (404, 0), (503, 1)])
async def test_a_token_paid_for_a_retry_that_does_not_happen_is_given_back(make_harness, status, spent):
    h = make_harness(**SCARCE)
    replies = iter([status, 200])
    h.handler = lambda _: httpx.Response(next(replies))
    await h.get()
    assert h.pipeline.budget.tokens == 1 - spent


async def test_a_token_paid_before_the_breaker_opened_is_given_back(make_harness):
    h = make_harness(breaker_min_calls=1, **SCARCE)
    h.handler = lambda _: httpx.Response(503)
    assert (await h.get()).reason == "breaker_open"
    assert h.pipeline.budget.tokens == 1


async def test_a_token_paid_by_a_cancelled_attempt_is_given_back(make_harness):
    h = make_harness(**SCARCE)
    h.handler = hang
    call = await h.start()
    assert h.pipeline.budget.tokens == 0
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert h.pipeline.budget.tokens == 1
