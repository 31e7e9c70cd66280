"""Chat's spans, in memory: the caller's trace continued, the resilience and GenAI spans, ids in logs."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from chat_service.main import create_app
from servicekit.tracing import Tracing
from tests.chat.conftest import MESSAGE, chat_settings, model_settings

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


class Spans:
    def __init__(self, exporter: InMemorySpanExporter) -> None:
        self.exporter = exporter

    @property
    def all(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()

    def named(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.all if span.name == name]

    def one(self, name: str) -> ReadableSpan:
        (span,) = self.named(name)
        return span

    def children(self, parent: ReadableSpan, name: str | None = None) -> list[ReadableSpan]:
        return [
            span
            for span in self.all
            if span.parent is not None and span.parent.span_id == parent.context.span_id and (name is None or span.name == name)
        ]

    def in_trace(self, trace_id: str) -> list[ReadableSpan]:
        return [span for span in self.all if format(span.context.trace_id, "032x") == trace_id]


@contextlib.asynccontextmanager
async def traced_chat(
    tmp_path, transport: httpx.AsyncBaseTransport, **overrides: object
) -> AsyncIterator[tuple[httpx.AsyncClient, Spans]]:
    exporter = InMemorySpanExporter()
    tracing = Tracing("chat", processor=SimpleSpanProcessor(exporter))
    app = create_app(chat_settings(tmp_path, **overrides), transport=transport, tracing=tracing)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(manager.app), base_url="http://chat") as client,
    ):
        yield client, Spans(exporter)


def attributes(span: ReadableSpan) -> dict[str, object]:
    return dict(span.attributes or {})


async def test_a_chat_continues_the_callers_trace_with_the_analytics_call_and_the_agent_run(tmp_path, analytics_transport):
    async with traced_chat(tmp_path, analytics_transport) as (chat, spans):
        response = await chat.post("/chat/", json={**MESSAGE, "text": "what time is it?"}, headers={"traceparent": TRACEPARENT})
        assert response.status_code == 200
    server = spans.one("POST /chat/")
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert server.parent is not None and format(server.parent.span_id, "016x") == PARENT_ID

    (read,) = [span for span in spans.children(server, "analytics-read")]
    assert attributes(read)["resilience.outcome"] == "ok"
    (attempt,) = spans.children(read, "analytics-read attempt")
    assert attributes(attempt)["resilience.attempt"] == 1

    run = spans.one("invoke_agent ChatAgent")
    assert run.parent is not None and run.parent.span_id == server.context.span_id
    assert attributes(run) | {"gen_ai.usage.input_tokens": 0, "gen_ai.usage.output_tokens": 0} == {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": "ChatAgent",
        "gen_ai.request.model": "offline",
        "gen_ai.provider.name": "openai",
        "gen_ai.usage.input_tokens": 0,
        "gen_ai.usage.output_tokens": 0,
        "chat.llm.offline_fallback": False,
    }
    (tool,) = spans.children(run, "execute_tool get_current_time")
    assert attributes(tool)["gen_ai.tool.name"] == "get_current_time"
    for span in spans.all:  # the user's words are in no span unless CHAT_TRACE_CONTENT says so
        assert "what time" not in json.dumps(attributes(span)) + json.dumps([dict(e.attributes or {}) for e in span.events])


async def test_analytics_failures_show_as_attempts_retries_breaker_events_and_the_fallback(tmp_path):
    transport = httpx.MockTransport(lambda _: httpx.Response(503))
    read_policy = {"attempts": 2, "breaker_mode": "consecutive", "breaker_failures": 2, "backoff_initial": 0.001}
    async with traced_chat(tmp_path, transport, analytics_read=read_policy) as (chat, spans):
        response = await chat.post("/chat/", json=MESSAGE, headers={"traceparent": TRACEPARENT})
        assert response.status_code == 200
        (read,) = [span for span in spans.named("analytics-read") if format(span.context.trace_id, "032x") == TRACE_ID]
        attempts = spans.children(read, "analytics-read attempt")
        assert [attributes(a)["resilience.attempt"] for a in attempts] == [1, 2]
        assert all(a.status.status_code is StatusCode.ERROR for a in attempts)
        assert [e.name for e in read.events] == ["retry_scheduled", "fallback"]
        assert dict(read.events[1].attributes or {})["reason"] == "status"
        assert "breaker_opened" in [e.name for e in attempts[1].events]
        assert read.status.status_code is StatusCode.ERROR

        spans.exporter.clear()
        await chat.post("/chat/", json=MESSAGE)  # no traceparent: a new trace, and the breaker refuses at once
        (read,) = spans.named("analytics-read")
        assert spans.children(read) == []
        assert dict(read.events[-1].attributes or {})["reason"] == "breaker_open"


async def test_probes_and_scrapes_are_not_traced(tmp_path, analytics_transport):
    async with traced_chat(tmp_path, analytics_transport) as (chat, spans):
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await chat.get(path)).status_code == 200
        assert (await chat.get("/")).status_code == 200
    assert [span.name for span in spans.all] == ["GET /"]


async def test_message_text_is_recorded_only_when_the_setting_says_so(tmp_path, analytics_transport):
    async with traced_chat(tmp_path, analytics_transport, trace_content=True) as (chat, spans):
        await chat.post("/chat/", json=MESSAGE)
    run = attributes(spans.one("invoke_agent ChatAgent"))
    assert json.loads(str(run["gen_ai.input.messages"]))[0]["parts"][0]["content"] == MESSAGE["text"]
    assert "You have sent 5 messages" in str(run["gen_ai.output.messages"])


@pytest.mark.integration
async def test_model_calls_are_chat_spans_with_tokens_and_the_request_carries_the_trace(tmp_path, analytics_transport, models):
    primary, fallback = models
    primary.switch(mode="503")
    async with traced_chat(tmp_path, analytics_transport, **model_settings(models)) as (chat, spans):
        response = await chat.post("/chat/", json=MESSAGE, headers={"traceparent": TRACEPARENT})
        assert response.json()["reply"].startswith("fallback here")
    run = spans.one("invoke_agent ChatAgent")
    assert attributes(run)["gen_ai.request.model"] == "primary-model"
    assert int(attributes(run)["gen_ai.usage.output_tokens"]) > 0  # type: ignore[call-overload]
    failed, answered = sorted(spans.children(run), key=lambda span: span.start_time or 0)
    assert (failed.name, attributes(failed)["chat.llm.endpoint"], attributes(failed)["chat.llm.outcome"]) == (
        "chat primary-model",
        "primary",
        "status_503",
    )
    assert failed.status.status_code is StatusCode.ERROR
    assert answered.name == "chat fallback-model" and attributes(answered)["chat.llm.outcome"] == "ok"
    assert int(attributes(answered)["gen_ai.usage.input_tokens"]) > 0  # type: ignore[call-overload]
    (pipeline,) = spans.children(failed, "llm-primary")
    attempts = spans.children(pipeline, "llm-primary attempt")
    assert len(attempts) == 2
    (request,) = spans.children(attempts[0])  # the aiohttp client span: the HTTP request itself
    status = attributes(request).get("http.response.status_code", attributes(request).get("http.status_code"))
    assert request.name == "POST" and status == 503
    sent = fallback.seen()[-1]["traceparent"]
    assert sent.split("-")[1] == TRACE_ID, "the model request carries the caller's trace"
    assert "sk-" not in json.dumps([attributes(span) for span in spans.all]), "no key in any span"


async def test_a_tool_that_calls_analytics_holds_that_call(tmp_path, analytics_transport):
    async with traced_chat(tmp_path, analytics_transport) as (chat, spans):
        response = await chat.post("/chat/", json={**MESSAGE, "text": "how many messages have I sent?"})
        assert response.status_code == 200 and "5 messages" in response.json()["reply"]
    (tool,) = spans.named("execute_tool get_user_analytics")
    (read,) = spans.children(tool, "analytics-read")
    assert attributes(read)["resilience.outcome"] == "ok"
