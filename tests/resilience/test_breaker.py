"""Every breaker transition, with one probe in half-open and nothing counted that should not be."""

from __future__ import annotations

import asyncio

import httpx

from resilience import Fallback, Ok, send
from tests.fakes.handlers import hang


async def get(h, path="/x"):
    return await send(h.pipeline, h.client, h.client.build_request("GET", path))


async def test_opens_after_consecutive_transient_failures_and_then_fails_fast(make_harness):
    h = make_harness(attempts=1, breaker_failures=3)
    h.handler = lambda _: httpx.Response(503)
    for _ in range(3):
        assert (await get(h)).reason == "status"
    assert h.pipeline.breaker.state == "open"
    sent = len(h.requests)
    outcome = await get(h)
    assert outcome == Fallback("breaker_open", attempts=0)
    assert len(h.requests) == sent, "an open breaker must not touch the network"
    assert "breaker_opened" in h.names()


async def test_a_success_resets_the_consecutive_count(make_harness):
    h = make_harness(attempts=1, breaker_failures=3)
    for status in (503, 503, 200, 503, 503):
        h.handler = lambda _, s=status: httpx.Response(s)
        await get(h)
    assert h.pipeline.breaker.state == "closed"
    assert h.pipeline.breaker.consecutive_failures == 2


async def test_half_open_probe_success_closes(make_harness):
    h = make_harness(attempts=1, breaker_failures=1, breaker_reset=5.0)
    h.handler = lambda _: httpx.Response(503)
    await get(h)
    h.clock.advance(4.9)
    assert (await get(h)).reason == "breaker_open"
    h.clock.advance(0.2)
    h.handler = lambda _: httpx.Response(200)
    assert isinstance(await get(h), Ok)
    assert h.pipeline.breaker.state == "closed"
    transitions = [e.fields["state"] for e in h.events if e.name.startswith("breaker_")]
    assert transitions == ["open", "half-open", "closed"]


async def test_half_open_probe_failure_reopens_with_a_fresh_timer(make_harness):
    h = make_harness(attempts=1, breaker_failures=1, breaker_reset=5.0)
    h.handler = lambda _: httpx.Response(503)
    await get(h)
    h.clock.advance(5.0)
    assert (await get(h)).reason == "status"  # the probe went out and failed
    assert h.pipeline.breaker.state == "open"
    h.clock.advance(4.0)
    assert (await get(h)).reason == "breaker_open"
    transitions = [e.fields["state"] for e in h.events if e.name.startswith("breaker_")]
    assert transitions == ["open", "half-open", "open"]


async def test_half_open_lets_exactly_one_of_100_concurrent_callers_through(make_harness):
    h = make_harness(attempts=3, breaker_failures=1, breaker_reset=1.0)
    h.handler = lambda _: httpx.Response(503)
    await get(h)
    assert h.pipeline.breaker.state == "open"
    h.clock.advance(1.0)
    sent_before = len(h.requests)
    release = asyncio.Event()

    async def slow_ok(_: httpx.Request) -> httpx.Response:
        await release.wait()
        return httpx.Response(200)

    h.handler = slow_ok
    calls = [asyncio.create_task(get(h)) for _ in range(100)]
    await asyncio.sleep(0.01)
    rejected = [c for c in calls if c.done()]
    assert len(rejected) == 99
    assert all(c.result() == Fallback("breaker_open") for c in rejected)
    release.set()
    results = await asyncio.gather(*calls)
    assert len(h.requests) - sent_before == 1
    assert sum(isinstance(r, Ok) for r in results) == 1
    assert h.pipeline.breaker.state == "closed"


async def test_404_and_other_4xx_are_not_failures(make_harness):
    h = make_harness(attempts=1, breaker_failures=2)
    h.handler = lambda _: httpx.Response(404)
    for _ in range(5):
        outcome = await get(h)
        assert outcome.reason == "status" and outcome.status == 404
    assert h.pipeline.breaker.state == "closed"
    assert h.pipeline.breaker.consecutive_failures == 0


async def test_cancellation_is_not_a_failure(make_harness):
    h = make_harness(attempts=1, breaker_failures=1)

    h.handler = hang
    for _ in range(3):
        task = asyncio.create_task(get(h))
        await asyncio.sleep(0.01)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        else:
            raise AssertionError("the caller's cancellation must propagate")
    assert h.pipeline.breaker.state == "closed"
    assert h.pipeline.breaker.consecutive_failures == 0
    assert h.pipeline.bulkhead.in_flight == 0


async def test_a_cancelled_probe_frees_the_half_open_slot(make_harness):
    h = make_harness(attempts=1, breaker_failures=1, breaker_reset=1.0)
    h.handler = lambda _: httpx.Response(503)
    await get(h)
    h.clock.advance(1.0)

    h.handler = hang
    probe = asyncio.create_task(get(h))
    await asyncio.sleep(0.01)
    assert (await get(h)).reason == "breaker_open"
    probe.cancel()
    await asyncio.gather(probe, return_exceptions=True)
    assert h.pipeline.breaker.state == "half-open"
    h.handler = lambda _: httpx.Response(200)
    assert isinstance(await get(h), Ok)
    assert h.pipeline.breaker.state == "closed"


async def test_a_non_transient_answer_to_the_probe_closes_the_breaker(make_harness):
    h = make_harness(attempts=1, breaker_failures=1, breaker_reset=1.0)
    h.handler = lambda _: httpx.Response(503)
    await get(h)
    h.clock.advance(1.0)
    h.handler = lambda _: httpx.Response(404)
    assert (await get(h)).status == 404
    assert h.pipeline.breaker.state == "closed"


async def test_late_results_of_attempts_admitted_before_opening_change_nothing(make_harness):
    h = make_harness(attempts=1, breaker_failures=1, breaker_reset=10.0)
    gate = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/slow":
            await gate.wait()
            return httpx.Response(200)
        return httpx.Response(503)

    h.handler = slow
    late = asyncio.create_task(get(h, "/slow"))
    await asyncio.sleep(0.01)
    await get(h, "/fail")
    assert h.pipeline.breaker.state == "open"
    gate.set()
    assert isinstance(await late, Ok)
    assert h.pipeline.breaker.state == "open", "a stale success must not close an open breaker"


async def test_a_late_failure_does_not_decide_a_half_open_breaker(make_harness):
    h = make_harness(attempts=1, breaker_failures=2, breaker_reset=1.0)
    gate = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/slow":
            await gate.wait()
        return httpx.Response(503)

    h.handler = handler
    late = asyncio.create_task(get(h, "/slow"))
    await asyncio.sleep(0.01)
    await get(h)
    await get(h)
    assert h.pipeline.breaker.state == "open"
    h.clock.advance(1.0)
    assert h.pipeline.breaker.admit() == "probe"  # someone else holds the probe
    gate.set()
    await late
    assert h.pipeline.breaker.state == "half-open"


async def test_remaining_open_counts_down_to_the_probe(make_harness):
    h = make_harness(attempts=1, breaker_failures=1, breaker_reset=5.0)
    assert h.pipeline.breaker.remaining_open == 0.0
    h.handler = lambda _: httpx.Response(503)
    await get(h)
    assert h.pipeline.breaker.remaining_open == 5.0
    h.clock.advance(3.5)
    assert h.pipeline.breaker.remaining_open == 1.5
    h.clock.advance(2.0)
    assert h.pipeline.breaker.remaining_open == 0.0  # due: the next call is the probe
