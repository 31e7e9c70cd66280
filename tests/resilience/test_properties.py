"""Invariants of the pipeline, for any policy and any sequence of peer behaviour."""

from __future__ import annotations

import asyncio
import random

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience import Pipeline, Policy, classify_httpx
from resilience.testing import FakeClock

policies = st.builds(
    Policy,
    deadline=st.floats(0.01, 5.0),
    attempts=st.integers(1, 6),
    backoff_initial=st.floats(0.001, 0.1),
    backoff_max=st.just(1.0),
    breaker_mode=st.sampled_from(["rate", "consecutive"]),
    breaker_failures=st.integers(1, 50),
    breaker_min_calls=st.integers(1, 50),
    hedge_delay=st.none(),
    budget_ratio=st.floats(0.0, 1.0),
    budget_reserve=st.floats(0.0, 20.0),
    budget_refill_per_second=st.just(0.0),
)
# One attempt: (seconds it takes, HTTP status or None for a connect error)
attempts = st.tuples(st.floats(0.0, 2.0), st.sampled_from([200, 404, 429, 500, 502, 503, 504, None]))


def run(policy: Policy, behaviour: list[tuple[float, int | None]], calls: int) -> tuple[FakeClock, list[int], list[float]]:
    clock = FakeClock()
    pipeline = Pipeline("peer", policy, on=classify_httpx, clock=clock, hooks=(), rng=random.Random(0))
    script = iter(behaviour * (calls * policy.attempts + 1))
    per_call: list[int] = []
    elapsed: list[float] = []

    async def drive() -> None:
        for _ in range(calls):
            made = 0
            started = clock.now

            async def attempt(remaining: float) -> int:
                nonlocal made
                made += 1
                seconds, status = next(script)
                if seconds >= remaining:  # what the per-attempt timeout does in real time
                    clock.advance(remaining)
                    raise TimeoutError
                clock.advance(seconds)
                request = httpx.Request("GET", "http://peer/")
                if status is None:
                    raise httpx.ConnectError("refused", request=request)
                response = httpx.Response(status, request=request)
                response.raise_for_status()
                return status

            await pipeline.call(attempt)
            per_call.append(made)
            elapsed.append(clock.now - started)

    asyncio.run(drive())
    return clock, per_call, elapsed


@settings(max_examples=150, deadline=None)
@given(policy=policies, behaviour=st.lists(attempts, min_size=1, max_size=8))
def test_the_deadline_is_never_exceeded_and_attempts_never_exceed_the_maximum(policy, behaviour):
    _, per_call, elapsed = run(policy, behaviour, calls=5)
    assert max(per_call) <= policy.attempts
    assert max(elapsed) <= policy.deadline + 1e-9


@settings(max_examples=100, deadline=None)
@given(policy=policies, calls=st.integers(1, 200), status=st.sampled_from([502, 503, 504, None]))
def test_the_budget_bounds_attempts_under_a_total_outage(policy, calls, status):
    _, per_call, _ = run(policy, [(0.0, status)], calls=calls)
    assert sum(per_call) <= calls * (1 + policy.budget_ratio) + policy.budget_reserve + 1e-9
