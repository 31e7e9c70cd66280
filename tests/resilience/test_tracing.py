"""Spans: a call span, a child per attempt, and every event on the span where it happened."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import StatusCode

from resilience import Event, Fallback, Ok, Pipeline, Policy, classify_httpx, send
from resilience._tracing import add_event
from resilience.testing import FakeClock
from tests.resilience.conftest import until


class Traced:
    """A traced pipeline on a fake clock in front of a scripted peer; spans land in memory."""

    def __init__(self, *statuses: int, sampled: bool = True, **policy: object) -> None:
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider(sampler=None if sampled else ALWAYS_OFF)
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.clock = FakeClock()
        self.pipeline = Pipeline(
            "peer", Policy(**policy), on=classify_httpx, clock=self.clock, hooks=(), tracer=provider.get_tracer("test")
        )  # type: ignore[arg-type]
        replies = iter(statuses)
        self.client = httpx.AsyncClient(
            transport=httpx.MockTransport(lambda _: httpx.Response(next(replies))), base_url="http://p"
        )

    async def get(self) -> Ok[httpx.Response] | Fallback:
        return await send(self.pipeline, self.client, self.client.build_request("GET", "/x"))

    def spans(self) -> tuple[ReadableSpan, list[ReadableSpan]]:
        """The call span and its attempt spans, in order, checked to be its children."""
        finished = self.exporter.get_finished_spans()
        calls = [span for span in finished if span.name == "peer"]
        assert len(calls) == 1
        attempts = [span for span in finished if span.name == "peer attempt"]
        assert all(span.parent is not None and span.parent.span_id == calls[0].context.span_id for span in attempts)
        return calls[0], sorted(attempts, key=lambda span: span.start_time or 0)


def events(span: ReadableSpan) -> list[str]:
    return [event.name for event in span.events]


async def test_a_call_is_a_span_with_a_child_per_attempt_and_the_retry_on_the_call():
    traced = Traced(503, 200, breaker_min_calls=100)
    assert isinstance(await traced.get(), Ok)
    call, attempts = traced.spans()
    assert call.attributes == {"resilience.target": "peer", "resilience.outcome": "ok", "resilience.attempts": 2}
    assert call.status.status_code is StatusCode.UNSET
    assert events(call) == ["retry_scheduled"]
    assert [span.attributes["resilience.attempt"] for span in attempts] == [1, 2]  # type: ignore[index]
    first, second = attempts
    assert first.status.status_code is StatusCode.ERROR
    assert events(first) == ["attempt_failed"]
    failed = first.events[0].attributes
    assert failed is not None and failed["reason"] == "status" and failed["status"] == 503
    assert second.status.status_code is StatusCode.UNSET and events(second) == []


async def test_a_fallback_names_its_reason_and_the_breaker_opening_is_on_the_attempt_that_opened_it():
    traced = Traced(503, 503, attempts=2, breaker_mode="consecutive", breaker_failures=2)
    outcome = await traced.get()
    assert isinstance(outcome, Fallback) and outcome.reason == "status"
    call, attempts = traced.spans()
    assert call.status.status_code is StatusCode.ERROR and call.status.description == "fallback: status"
    assert call.attributes is not None
    assert call.attributes["resilience.outcome"] == "status" and call.attributes["http.response.status_code"] == 503
    assert events(call) == ["retry_scheduled", "fallback"]
    assert events(attempts[1]) == ["attempt_failed", "breaker_opened"]
    opened = attempts[1].events[1].attributes
    assert opened is not None and opened["state"] == "open" and opened["previous"] == "closed"

    traced.exporter.clear()
    outcome = await traced.get()  # refused by the open breaker: no attempt at all
    assert isinstance(outcome, Fallback) and outcome.reason == "breaker_open"
    call, attempts = traced.spans()
    assert attempts == [] and events(call) == ["fallback"]
    assert call.attributes is not None and "http.response.status_code" not in call.attributes
    reason = call.events[0].attributes
    assert reason is not None and reason["reason"] == "breaker_open" and "status" not in reason


async def test_a_full_bulkhead_is_an_event_on_the_call():
    traced = Traced(200, bulkhead=1)
    assert traced.pipeline.bulkhead.try_enter()
    assert (await traced.get()) == Fallback("bulkhead_full")
    call, _ = traced.spans()
    assert events(call) == ["bulkhead_rejected", "fallback"]


async def test_hedged_copies_are_numbered_attempts_of_one_call():
    traced = Traced(200, hedge_delay=0.1, deadline=0.5)
    release = asyncio.Event()

    async def slow_then_fast(request: httpx.Request) -> httpx.Response:
        if not release.is_set():
            release.set()
            await asyncio.Event().wait()  # the first copy never answers
        return httpx.Response(200)

    traced.client = httpx.AsyncClient(transport=httpx.MockTransport(slow_then_fast), base_url="http://p")
    call = asyncio.create_task(traced.get())
    await until(release.is_set)
    await until(lambda: traced.clock.pending_timeouts == 2)
    traced.clock.advance(0.1)
    assert isinstance(await call, Ok)
    span, attempts = traced.spans()
    assert [a.attributes["resilience.attempt"] for a in attempts] == [1, 2]  # type: ignore[index]
    assert events(span) == ["hedge_started"]


async def test_an_unsampled_call_records_nothing_and_still_works():
    traced = Traced(503, 200, sampled=False, breaker_min_calls=100)
    assert isinstance(await traced.get(), Ok)
    assert traced.exporter.get_finished_spans() == ()


def test_event_fields_that_are_not_attribute_types_are_written_as_text():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("test").start_as_current_span("call"):
        add_event(Event("fallback", "peer", {"reason": "status", "status": None, "detail": ("a", 1)}))
    (span,) = exporter.get_finished_spans()
    assert span.events[0].attributes == {"resilience.target": "peer", "reason": "status", "detail": "('a', 1)"}


@pytest.mark.parametrize("hooks", [(), ("given",)])
def test_the_span_hook_comes_after_the_callers_hooks_and_only_with_a_tracer(hooks):
    seen: list[Event] = []
    given = tuple(seen.append for _ in hooks)
    untraced = Pipeline("peer", Policy(), on=classify_httpx, hooks=given)
    assert untraced._hooks == given
    traced = Pipeline("peer", Policy(), on=classify_httpx, hooks=given, tracer=TracerProvider().get_tracer("t"))
    assert traced._hooks == (*given, add_event)
