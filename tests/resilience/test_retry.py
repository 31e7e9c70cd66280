"""Retries: what is retried, how long each attempt may take, when we stop, and what callers see."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from resilience import Fallback, FallbackError, InvalidResponseError, Ok, Pipeline, Policy, Timeouts, classify_httpx, send
from tests.fakes.handlers import hang
from tests.resilience.conftest import until


def failing_then(statuses):
    replies = iter(statuses)
    return lambda _: httpx.Response(next(replies))


async def test_transient_statuses_are_retried_until_success(make_harness):
    for status in (429, 502, 503, 504):
        h = make_harness()
        h.handler = failing_then([status, status, 200])
        outcome = await h.get()
        assert isinstance(outcome, Ok) and outcome.attempts == 3
        assert outcome.unwrap().status_code == 200


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422, 500, 501])
async def test_other_statuses_are_never_retried(make_harness, status):
    h = make_harness()
    h.handler = lambda _: httpx.Response(status)
    outcome = await h.get()
    assert outcome == Fallback("status", attempts=1, error=outcome.error, status=status)
    assert len(h.requests) == 1


async def test_answers_are_values_not_failures(make_harness):
    h = make_harness()
    h.handler = lambda _: httpx.Response(404)
    outcome = await send(h.pipeline, h.client, h.client.build_request("GET", "/x"), answers=frozenset({404}))
    assert isinstance(outcome, Ok) and outcome.value.status_code == 404


async def test_backoff_is_full_jitter_and_capped(make_harness):
    h = make_harness(attempts=6, deadline=100, backoff_initial=0.1, backoff_max=0.3, breaker_min_calls=100)
    h.handler = lambda _: httpx.Response(503)
    await h.get()
    ceilings = [0.1, 0.2, 0.3, 0.3, 0.3]
    assert len(h.clock.sleeps) == 5
    assert all(0 <= s <= c for s, c in zip(h.clock.sleeps, ceilings, strict=True))


async def test_retry_after_is_honoured(make_harness):
    h = make_harness(deadline=5, retry_after_max=2)
    replies = iter([httpx.Response(503, headers={"Retry-After": "1"}), httpx.Response(200)])
    h.handler = lambda _: next(replies)
    assert isinstance(await h.get(), Ok)
    assert h.clock.sleeps[0] >= 1.0


async def test_retry_after_over_the_cap_ends_the_call(make_harness):
    h = make_harness(deadline=100, retry_after_max=2)
    h.handler = lambda _: httpx.Response(429, headers={"Retry-After": "30"})
    outcome = await h.get()
    assert outcome.reason == "status" and outcome.status == 429 and outcome.attempts == 1
    assert h.clock.sleeps == []


async def test_retry_after_never_sleeps_past_the_deadline(make_harness):
    h = make_harness(deadline=0.5, retry_after_max=2)
    h.handler = lambda _: httpx.Response(503, headers={"Retry-After": "1"})
    outcome = await h.get()
    assert outcome.reason == "deadline" and outcome.attempts == 1
    assert h.clock.sleeps == []


async def test_no_sleep_would_cross_the_deadline(make_harness):
    h = make_harness(deadline=0.05, attempts=10, backoff_initial=0.04, backoff_max=0.04, breaker_min_calls=100)
    h.handler = lambda _: httpx.Response(503)
    start = h.clock.now
    outcome = await h.get()
    assert outcome.reason in ("deadline", "status")
    assert h.clock.now - start < 0.05


async def test_the_deadline_holds_against_a_server_that_hangs():
    pipeline = Pipeline("peer", Policy(deadline=0.2), on=classify_httpx, hooks=())
    async with httpx.AsyncClient(transport=httpx.MockTransport(hang), base_url="http://peer") as client:
        started = time.monotonic()
        outcome = await send(pipeline, client, client.build_request("GET", "/x"))
        elapsed = time.monotonic() - started
    assert outcome.reason == "deadline"  # the attempt ran out of time, and no time was left to retry
    assert elapsed < 0.2 + 0.3, f"deadline 0.2 s overshot: {elapsed:.3f} s"  # generous: noisy machines


async def test_transport_errors_are_classified_and_retried(make_harness):
    cases = [
        (httpx.ConnectError("refused"), "connect"),
        (httpx.ReadTimeout("slow"), "timeout"),
        (httpx.RemoteProtocolError("eof"), "transport"),
    ]
    for error, reason in cases:
        h = make_harness()

        def raise_it(_: httpx.Request, error=error) -> httpx.Response:
            raise error

        h.handler = raise_it
        outcome = await h.get()
        assert outcome.reason == reason and outcome.attempts == 3
        assert outcome.error is error, "callers see the original error, never tenacity's RetryError"


async def test_invalid_responses_are_not_retried(make_harness):
    h = make_harness()

    async def attempt(_: float) -> int:
        raise InvalidResponseError("not json")

    outcome = await h.pipeline.call(attempt)
    assert outcome.reason == "invalid_response" and outcome.attempts == 1


async def test_unknown_errors_propagate_unchanged(make_harness):
    h = make_harness()

    async def buggy(_: float) -> int:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        await h.pipeline.call(buggy)
    assert h.pipeline.breaker.consecutive_failures == 0
    assert h.pipeline.bulkhead.in_flight == 0


async def test_post_is_retried_only_with_an_idempotency_key(make_harness):
    h = make_harness()
    h.handler = lambda _: httpx.Response(503)
    await send(h.pipeline, h.client, h.client.build_request("POST", "/x", json={}))
    assert len(h.requests) == 1
    await send(h.pipeline, h.client, h.client.build_request("POST", "/x", json={}, headers={"Idempotency-Key": "k"}))
    assert len(h.requests) == 1 + 3
    assert {r.content for r in h.requests[1:]} == {b"{}"}, "the body is re-sent whole"


async def test_no_retry_state_is_shared_between_concurrent_calls(make_harness):
    h = make_harness(attempts=3, deadline=1000, budget_reserve=1000, breaker_min_calls=10_000)
    seen: dict[str, int] = {}

    async def first_fails(request: httpx.Request) -> httpx.Response:
        key = request.url.path
        seen[key] = seen.get(key, 0) + 1
        await asyncio.sleep(0)
        return httpx.Response(503 if seen[key] == 1 else 200)

    h.handler = first_fails
    outcomes = await asyncio.gather(*(h.get(f"/u{i}") for i in range(50)))
    assert [o.attempts if isinstance(o, Ok) else o for o in outcomes] == [2] * 50
    assert set(seen.values()) == {2}


async def test_each_attempt_gets_timeouts_clipped_to_the_deadline(make_harness):
    h = make_harness(deadline=0.15)
    await h.get()
    timeout = h.requests[0].extensions["timeout"]
    assert timeout == pytest.approx({"connect": 0.1, "read": 0.15, "write": 0.1, "pool": 0.05})


async def test_fallback_unwrap_raises_with_the_fallback(make_harness):
    h = make_harness(attempts=1)
    h.handler = lambda _: httpx.Response(503)
    outcome = await h.get()
    with pytest.raises(FallbackError) as raised:
        outcome.unwrap()
    assert raised.value.fallback is outcome


async def test_retries_emit_named_events(make_harness):
    h = make_harness()
    h.handler = failing_then([503, 200])
    await h.get()
    assert h.names() == ["attempt_failed", "retry_scheduled"]
    assert h.events[1].fields["attempt"] == 1


async def test_a_bug_on_a_retry_still_propagates_unchanged(make_harness):
    h = make_harness()
    replies = iter([httpx.Response(503)])

    def handler(_: httpx.Request) -> httpx.Response:
        try:
            return next(replies)
        except StopIteration:
            raise KeyError("bug in the second attempt") from None

    h.handler = handler
    with pytest.raises(KeyError):
        await h.get()
    assert h.pipeline.bulkhead.in_flight == 0


async def test_a_breaker_opened_by_others_during_backoff_ends_the_retries(make_harness):
    h = make_harness(breaker_mode="consecutive", breaker_failures=2, deadline=100)
    h.handler = lambda _: httpx.Response(503)
    first, second = await asyncio.gather(h.get("/a"), h.get("/b"))
    # One call's failure opened the breaker while the other slept before its retry.
    assert sorted([first.attempts, second.attempts]) == [1, 1]
    assert {first.reason, second.reason} == {"breaker_open"}
    assert len(h.requests) == 2


async def test_a_calls_own_deadline_shortens_the_policys_but_never_extends_it(make_harness):
    h = make_harness(deadline=10, attempts=1)  # the only attempt gets all the time the call has
    seen: list[float] = []

    async def attempt(seconds: float) -> str:
        seen.append(seconds)
        return "ok"

    assert isinstance(await h.pipeline.call(attempt, deadline=2.5), Ok)
    assert isinstance(await h.pipeline.call(attempt, deadline=60), Ok)
    assert isinstance(await h.pipeline.call(attempt), Ok)
    assert seen == pytest.approx([2.5, 10, 10])


async def test_backoff_never_crosses_a_calls_own_deadline(make_harness):
    h = make_harness(deadline=100, retry_after_max=5)
    h.handler = lambda _: httpx.Response(503, headers={"Retry-After": "2"})

    async def attempt(seconds: float) -> httpx.Response:
        response = await h.client.get("/x")
        return response.raise_for_status()

    outcome = await h.pipeline.call(attempt, deadline=1.0)
    assert outcome.reason == "deadline" and outcome.attempts == 1
    assert h.clock.sleeps == []


async def test_an_attempt_a_retry_could_follow_is_cut_at_the_read_timeout_and_the_last_gets_the_rest(make_harness):
    h = make_harness(deadline=0.5, timeouts=Timeouts(read=0.2), backoff_initial=0.02, backoff_max=0.02)
    h.handler = hang
    call = await h.start()
    assert h.requests[0].extensions["timeout"]["read"] == 0.2, "a full 0.2 s retry still fits after this one"
    h.clock.advance(0.2)
    await until(lambda: len(h.requests) == 2)
    left = 0.5 - 0.2 - h.clock.sleeps[0]
    assert h.requests[1].extensions["timeout"]["read"] == pytest.approx(left), "no third attempt fits: all the rest"
    h.clock.advance(left)
    outcome = await call
    assert outcome.reason == "deadline" and outcome.attempts == 2


async def test_a_slow_peer_answers_within_the_last_attempt(make_harness):
    # 0.26 s per answer: over the 0.2 s read timeout, under the deadline's 0.5 s.
    h = make_harness(deadline=0.5, timeouts=Timeouts(read=0.2), backoff_initial=0.02, backoff_max=0.02)
    answer = asyncio.Event()

    async def slow(_: httpx.Request) -> httpx.Response:
        await answer.wait()
        return httpx.Response(200)

    h.handler = slow
    call = await h.start()
    h.clock.advance(0.2)  # the first attempt is cut: a retry with a full 0.2 s fits after it
    await until(lambda: len(h.requests) == 2)
    h.clock.advance(0.26)  # past a 0.2 s read timeout, within the time left
    answer.set()
    outcome = await call
    assert isinstance(outcome, Ok) and outcome.attempts == 2


@pytest.mark.parametrize(
    "policy",
    [
        {"attempts": 1},
        {"budget_reserve": 0, "budget_ratio": 0, "budget_refill_per_second": 0},  # the budget allows no retry
        {"deadline": 0.35},  # 0.2 s now leaves less than 0.2 s for a retry
    ],
)
async def test_the_only_attempt_possible_gets_all_the_time_left(make_harness, policy):
    h = make_harness(**policy)
    await h.get()
    assert h.requests[0].extensions["timeout"]["read"] == pytest.approx(h.pipeline.policy.deadline)


async def test_a_request_that_cannot_be_retried_gets_all_the_time_left(make_harness):
    h = make_harness(deadline=0.5)
    await send(h.pipeline, h.client, h.client.build_request("POST", "/x", json={}))
    assert h.requests[0].extensions["timeout"]["read"] == pytest.approx(0.5)


async def test_the_attempt_timeout_follows_the_injected_clock(make_harness):
    h = make_harness(attempts=1, deadline=0.5)

    async def attempt(allowed: float) -> None:
        await asyncio.Event().wait()  # never answers: only the clock can end it

    call = asyncio.create_task(h.pipeline.call(attempt))
    await until(lambda: h.clock.pending_timeouts == 1)
    h.clock.advance(0.49)
    await until(lambda: h.clock.pending_timeouts == 1)
    assert not call.done()
    h.clock.advance(0.01)
    outcome = await call
    assert outcome.reason == "timeout" and outcome.attempts == 1
