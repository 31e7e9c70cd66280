"""Every breaker transition in both modes, one probe in half-open, nothing counted that should not be."""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest

from resilience import Fallback, Ok, SlidingWindow
from tests.fakes.handlers import hang
from tests.resilience.conftest import until

CONSECUTIVE = {"breaker_mode": "consecutive"}


def statuses(*codes: int):
    replies = iter(codes)
    return lambda _: httpx.Response(next(replies))


async def test_consecutive_mode_opens_after_n_failures_in_a_row_and_then_fails_fast(make_harness):
    h = make_harness(attempts=1, breaker_failures=3, **CONSECUTIVE)
    h.handler = lambda _: httpx.Response(503)
    for _ in range(3):
        assert (await h.get()).reason == "status"
    assert h.pipeline.breaker.state == "open"
    sent = len(h.requests)
    outcome = await h.get()
    assert outcome == Fallback("breaker_open", attempts=0)
    assert len(h.requests) == sent, "an open breaker must not touch the network"
    opened = next(e for e in h.events if e.name == "breaker_opened")
    assert opened.fields["mode"] == "consecutive" and opened.fields["consecutive_failures"] == 3


async def test_consecutive_mode_a_success_resets_the_count(make_harness):
    h = make_harness(attempts=1, breaker_failures=3, **CONSECUTIVE)
    h.handler = statuses(503, 503, 200, 503, 503)
    for _ in range(5):
        await h.get()
    assert h.pipeline.breaker.state == "closed"
    assert h.pipeline.breaker.consecutive_failures == 2


async def test_rate_mode_waits_for_the_minimum_number_of_calls(make_harness):
    h = make_harness(attempts=1, breaker_min_calls=10, breaker_failure_rate=0.5)
    h.handler = lambda _: httpx.Response(503)
    for _ in range(9):
        await h.get()
    assert h.pipeline.breaker.state == "closed", "9 failures are fewer than the 10 calls needed to judge"
    assert h.pipeline.breaker.consecutive_failures == 9
    await h.get()
    assert h.pipeline.breaker.state == "open"
    opened = next(e for e in h.events if e.name == "breaker_opened")
    assert opened.fields | {"reset_after": None} == {
        "previous": "closed",
        "state": "open",
        "reset_after": None,
        "mode": "rate",
        "consecutive_failures": 10,
        "window_calls": 10,
        "failure_rate": 1.0,
    }


async def test_rate_mode_opens_at_the_threshold_not_below_it(make_harness):
    h = make_harness(attempts=1, breaker_min_calls=10, breaker_failure_rate=0.5)
    h.handler = statuses(*[200, 503] * 4, 200, 200)  # 4 failures of 10: 40%
    for _ in range(10):
        await h.get()
    assert h.pipeline.breaker.state == "closed"
    assert h.pipeline.breaker.failure_rate == pytest.approx(0.4)
    h.handler = statuses(503, 503)  # 6 of 12: 50%
    await h.get()
    assert h.pipeline.breaker.state == "closed"
    await h.get()
    assert h.pipeline.breaker.state == "open"


async def test_rate_mode_stays_closed_under_a_30_percent_flaky_peer_that_consecutive_mode_opens_on(make_harness):
    rng = random.Random(7)
    outcomes = [503 if rng.random() < 0.3 else 200 for _ in range(1000)]
    opened: dict[str, int] = {}
    for mode in ("rate", "consecutive"):
        h = make_harness(attempts=1, breaker_mode=mode, breaker_reset=0.01)
        h.handler = statuses(*outcomes)
        for _ in outcomes:
            h.clock.advance(0.002)  # 500 calls a second
            await h.get()
        opened[mode] = h.names().count("breaker_opened")
    assert opened["rate"] == 0
    assert opened["consecutive"] >= 1, opened  # five 503s in a row come about every 600 calls at 30%


async def test_rate_mode_forgets_failures_older_than_the_window(make_harness):
    h = make_harness(attempts=1, breaker_window=10.0, breaker_min_calls=10, breaker_failure_rate=0.5)
    h.handler = lambda _: httpx.Response(503)
    for _ in range(8):
        await h.get()
    h.clock.advance(11.0)
    assert h.pipeline.breaker.window_calls == 8, "the window moves when something is recorded"
    h.handler = lambda _: httpx.Response(200)
    await h.get()
    assert h.pipeline.breaker.window_calls == 1 and h.pipeline.breaker.failure_rate == 0.0
    h.handler = lambda _: httpx.Response(503)
    for _ in range(8):
        await h.get()
    assert h.pipeline.breaker.state == "closed", "8 failures in 9 calls: not yet the 10 calls needed"
    await h.get()
    assert h.pipeline.breaker.state == "open"


async def test_rate_mode_opens_on_a_run_of_failures_even_after_a_busy_healthy_spell(make_harness):
    h = make_harness(attempts=1, breaker_min_calls=20, breaker_failure_rate=0.5)
    for _ in range(500):
        await h.get()  # the window is full of successes
    h.handler = lambda _: httpx.Response(503)
    for _ in range(19):
        await h.get()
    assert h.pipeline.breaker.state == "closed" and h.pipeline.breaker.failure_rate < 0.05
    await h.get()
    assert h.pipeline.breaker.state == "open", "20 failures in a row: the peer is down, whatever the window says"


async def test_a_slow_peer_does_not_open_the_breaker_but_a_hung_one_does(make_harness):
    # 0.26 s an answer: the first attempt is cut at the 0.2 s read timeout, the last one answers.
    h = make_harness(breaker_min_calls=4, backoff_initial=0.02, backoff_max=0.02)
    answer = asyncio.Event()

    async def slow(_: httpx.Request) -> httpx.Response:
        await answer.wait()
        return httpx.Response(200)

    h.handler = slow
    for _ in range(5):
        answer.clear()
        sent = len(h.requests)
        call = await h.start()
        h.clock.advance(0.2)
        await until(lambda n=sent: len(h.requests) == n + 2)
        h.clock.advance(0.26)
        answer.set()
        assert isinstance(await call, Ok)
    assert h.pipeline.breaker.state == "closed" and h.pipeline.breaker.failure_rate == 0.0
    assert h.pipeline.breaker.window_calls == 5, "only the attempts that had all the time left gave a verdict"

    h.handler = hang
    reasons = []
    for _ in range(4):
        call = await h.start()
        h.clock.advance(0.2)
        await until(lambda: h.clock.pending_timeouts == 1 and len(h.requests) % 2 == 0)
        h.clock.advance(0.3)
        reasons.append((await call).reason)
    assert reasons == ["deadline"] * 3 + ["breaker_open"], "the 4th last attempt to time out opened it"
    assert h.pipeline.breaker.state == "open"


def test_the_sliding_window_drops_whole_slices_as_time_moves():
    window = SlidingWindow(10.0, buckets=10)
    window.record(100.0, failed=True)
    window.record(104.5, failed=False)
    window.record(109.9, failed=True)
    assert (window.calls, window.failures) == (3, 2)
    window.record(110.5, failed=False)  # the slice of t=100 has left the window
    assert (window.calls, window.failures) == (3, 1)
    window.record(500.0, failed=False)  # a long quiet spell empties everything
    assert (window.calls, window.failures) == (1, 0)
    window.clear()
    assert (window.calls, window.failures) == (0, 0)


async def test_half_open_probe_success_closes_and_starts_a_clean_window(make_harness):
    h = make_harness(attempts=1, breaker_min_calls=2, breaker_reset=5.0)
    h.handler = lambda _: httpx.Response(503)
    await h.get()
    await h.get()
    assert h.pipeline.breaker.state == "open"
    h.clock.advance(4.9)
    assert (await h.get()).reason == "breaker_open"
    h.clock.advance(0.2)
    h.handler = lambda _: httpx.Response(200)
    assert isinstance(await h.get(), Ok)
    assert h.pipeline.breaker.state == "closed"
    assert h.transitions() == ["open", "half-open", "closed"]
    assert h.pipeline.breaker.window_calls == 0 and h.pipeline.breaker.consecutive_failures == 0


@pytest.mark.parametrize("mode", ["rate", "consecutive"])
async def test_half_open_probe_failure_reopens_with_a_fresh_timer(make_harness, mode):
    h = make_harness(attempts=1, breaker_mode=mode, breaker_failures=1, breaker_min_calls=1, breaker_reset=5.0)
    h.handler = lambda _: httpx.Response(503)
    await h.get()
    h.clock.advance(5.0)
    assert (await h.get()).reason == "status"  # the probe went out and failed
    assert h.pipeline.breaker.state == "open"
    h.clock.advance(4.0)
    assert (await h.get()).reason == "breaker_open"
    assert h.transitions() == ["open", "half-open", "open"]


async def test_half_open_lets_exactly_one_of_100_concurrent_callers_through(make_harness):
    h = make_harness(attempts=3, breaker_min_calls=1, breaker_reset=1.0)
    h.handler = lambda _: httpx.Response(503)
    await h.get()
    assert h.pipeline.breaker.state == "open"
    h.clock.advance(1.0)
    sent_before = len(h.requests)
    release = asyncio.Event()

    async def slow_ok(_: httpx.Request) -> httpx.Response:
        await release.wait()
        return httpx.Response(200)

    h.handler = slow_ok
    calls = [asyncio.create_task(h.get()) for _ in range(100)]
    await until(lambda: sum(c.done() for c in calls) == 99 and len(h.requests) > sent_before)
    assert all(c.result() == Fallback("breaker_open") for c in calls if c.done())
    release.set()
    results = await asyncio.gather(*calls)
    assert len(h.requests) - sent_before == 1
    assert sum(isinstance(r, Ok) for r in results) == 1
    assert h.pipeline.breaker.state == "closed"


async def test_404_and_other_4xx_are_not_failures(make_harness):
    h = make_harness(attempts=1, breaker_min_calls=2)
    h.handler = lambda _: httpx.Response(404)
    for _ in range(5):
        outcome = await h.get()
        assert outcome.reason == "status" and outcome.status == 404
    assert h.pipeline.breaker.state == "closed"
    assert h.pipeline.breaker.consecutive_failures == 0
    assert h.pipeline.breaker.window_calls == 5 and h.pipeline.breaker.failure_rate == 0.0


async def test_cancellation_is_not_a_failure(make_harness):
    h = make_harness(attempts=1, breaker_min_calls=1)
    h.handler = hang
    for _ in range(3):
        task = await h.start()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert h.pipeline.breaker.state == "closed"
    assert h.pipeline.breaker.window_calls == 0
    assert h.pipeline.bulkhead.in_flight == 0


async def test_a_cancelled_probe_frees_the_half_open_slot(make_harness):
    h = make_harness(attempts=1, breaker_min_calls=1, breaker_reset=1.0)
    h.handler = lambda _: httpx.Response(503)
    await h.get()
    h.clock.advance(1.0)

    h.handler = hang
    probe = await h.start()
    assert (await h.get()).reason == "breaker_open"
    probe.cancel()
    await asyncio.gather(probe, return_exceptions=True)
    assert h.pipeline.breaker.state == "half-open"
    h.handler = lambda _: httpx.Response(200)
    assert isinstance(await h.get(), Ok)
    assert h.pipeline.breaker.state == "closed"


async def test_a_probe_that_times_out_reopens_the_breaker(make_harness):
    h = make_harness(attempts=3, deadline=0.5, breaker_min_calls=1, breaker_reset=1.0)
    h.handler = lambda _: httpx.Response(503)
    await h.get()
    h.clock.advance(1.0)
    h.handler = hang
    probe = await h.start()
    h.clock.advance(0.5)  # the fake clock fires the attempt's timeout
    outcome = await probe
    assert outcome.reason == "breaker_open" and outcome.attempts == 1
    assert h.transitions() == ["open", "half-open", "open"]


async def test_a_non_transient_answer_to_the_probe_closes_the_breaker(make_harness):
    h = make_harness(attempts=1, breaker_min_calls=1, breaker_reset=1.0)
    h.handler = lambda _: httpx.Response(503)
    await h.get()
    h.clock.advance(1.0)
    h.handler = lambda _: httpx.Response(404)
    assert (await h.get()).status == 404
    assert h.pipeline.breaker.state == "closed"


@pytest.mark.parametrize("mode", ["rate", "consecutive"])
async def test_late_results_of_attempts_admitted_before_opening_change_nothing(make_harness, mode):
    h = make_harness(attempts=1, breaker_mode=mode, breaker_failures=1, breaker_min_calls=1, breaker_reset=10.0)
    gate = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/slow":
            await gate.wait()
            return httpx.Response(200)
        return httpx.Response(503)

    h.handler = slow
    late = await h.start("/slow")
    await h.get("/fail")
    assert h.pipeline.breaker.state == "open"
    gate.set()
    assert isinstance(await late, Ok)
    assert h.pipeline.breaker.state == "open", "a stale success must not close an open breaker"


async def test_a_late_failure_does_not_decide_a_half_open_breaker(make_harness):
    h = make_harness(attempts=1, breaker_min_calls=2, breaker_reset=1.0)
    gate = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/slow":
            await gate.wait()
        return httpx.Response(503)

    h.handler = handler
    late = await h.start("/slow")
    await h.get()
    await h.get()
    assert h.pipeline.breaker.state == "open"
    h.clock.advance(1.0)
    assert h.pipeline.breaker.admit() == "probe"  # someone else holds the probe
    gate.set()
    await late
    assert h.pipeline.breaker.state == "half-open"


async def test_remaining_open_counts_down_to_the_probe(make_harness):
    h = make_harness(attempts=1, breaker_failures=1, breaker_reset=5.0, **CONSECUTIVE)
    assert h.pipeline.breaker.remaining_open == 0.0
    h.handler = lambda _: httpx.Response(503)
    await h.get()
    assert h.pipeline.breaker.remaining_open == 5.0
    h.clock.advance(3.5)
    assert h.pipeline.breaker.remaining_open == 1.5
    h.clock.advance(2.0)
    assert h.pipeline.breaker.remaining_open == 0.0  # due: the next call is the probe
