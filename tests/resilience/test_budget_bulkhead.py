"""The retry budget and the bulkhead: an outage never multiplies load, and nothing queues."""

from __future__ import annotations

import asyncio

import httpx

from resilience import Fallback, Ok, RetryBudget
from resilience.testing import FakeClock


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
