"""Both services as real processes exporting OTLP/HTTP to a receiver the test runs: one trace per chat."""

from __future__ import annotations

import json
import secrets

import httpx
import pytest

from tests.fakes.otlp_receiver import OtlpReceiver, ReceivedSpan

pytestmark = pytest.mark.integration

SERVER, CLIENT = 2, 3  # OTLP span kinds


def traceparent() -> tuple[str, str]:
    trace_id = secrets.token_hex(16)
    return trace_id, f"00-{trace_id}-{secrets.token_hex(8)}-01"


def one(spans: list[ReceivedSpan], service: str, name: str) -> ReceivedSpan:
    (span,) = [span for span in spans if span.service == service and span.name == name]
    return span


def log_lines(path: str) -> list[dict[str, object]]:
    with open(path) as log:
        return [json.loads(line) for line in log if line.startswith("{")]


def test_a_chat_is_one_trace_across_chat_and_analytics_with_attempts_and_breaker_events(make_stack):
    with OtlpReceiver() as receiver:
        otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
        breaker = {
            "CHAT_ANALYTICS_READ__BREAKER_MODE": "consecutive",
            "CHAT_ANALYTICS_READ__BREAKER_FAILURES": "2",
            "CHAT_SHUTDOWN_FLUSH_SECONDS": "0.5",  # analytics is dead by then: no need to wait for it
        }
        stack = make_stack(analytics_extra=otel, chat_extra={**otel, **breaker})
        trace_id, header = traceparent()
        response = httpx.post(
            stack.chat.url + "/chat/", json={"user_id": "alice", "text": "hi"}, headers={"traceparent": header}, timeout=10
        )
        assert response.status_code == 200

        def both_services_reported() -> bool:
            services = {span.service for span in receiver.in_trace(trace_id)}
            return {"chat", "analytics"} <= services and any(s.name == "POST /chat/" for s in receiver.in_trace(trace_id))

        receiver.wait_for(both_services_reported)
        spans = receiver.in_trace(trace_id)
        server = one(spans, "chat", "POST /chat/")
        assert server.kind == SERVER and server.parent_id == header.split("-")[2], "the caller's span is the parent"
        read = one(spans, "chat", "analytics-read")
        assert read.parent_id == server.span_id and read.attributes["resilience.outcome"] == "ok"
        attempt = one(spans, "chat", "analytics-read attempt")
        assert attempt.parent_id == read.span_id and attempt.attributes["resilience.attempt"] == 1
        (request,) = [span for span in spans if span.service == "chat" and span.parent_id == attempt.span_id]
        assert request.kind == CLIENT
        answered = one(spans, "analytics", "GET /analytics/{user_id}")
        assert answered.kind == SERVER and answered.parent_id == request.span_id, "analytics joins chat's trace"
        run = one(spans, "chat", "invoke_agent ChatAgent")
        assert run.parent_id == server.span_id and run.attributes["gen_ai.request.model"] == "offline"

        # The log lines of both services carry the trace id beside the request id.
        chat_lines = [line for line in log_lines(stack.chat.log_path) if line.get("trace_id") == trace_id]  # type: ignore[arg-type]
        assert any(line.get("event") == "request" and line.get("path") == "/chat/" for line in chat_lines)
        assert all(line.get("request_id") for line in chat_lines)
        analytics_lines = log_lines(stack.analytics.log_path)  # type: ignore[arg-type]
        assert any(line.get("trace_id") == trace_id and line.get("path") == "/analytics/alice" for line in analytics_lines)

        # Analytics dies: the next chat's trace shows the failed attempts and the breaker opening.
        stack.analytics.kill()
        trace_id, header = traceparent()
        response = httpx.post(
            stack.chat.url + "/chat/", json={"user_id": "alice", "text": "hi"}, headers={"traceparent": header}, timeout=10
        )
        assert response.status_code == 200
        receiver.wait_for(lambda: any(span.name == "POST /chat/" for span in receiver.in_trace(trace_id)))
        spans = receiver.in_trace(trace_id)
        read = one(spans, "chat", "analytics-read")
        attempts = sorted(
            (span for span in spans if span.name == "analytics-read attempt"), key=lambda s: s.attributes["resilience.attempt"]
        )
        assert [span.attributes["resilience.attempt"] for span in attempts] == [1, 2]
        assert all(span.status == 2 and span.parent_id == read.span_id for span in attempts)  # 2: ERROR
        assert attempts[0].event_names() == ["attempt_failed"]
        assert attempts[1].event_names() == ["attempt_failed", "breaker_opened"]
        assert attempts[0].events[0][1]["reason"] in ("connect", "transport")  # refused, or a pooled connection found dead
        assert read.event_names() == ["retry_scheduled", "fallback"]
        assert read.events[1][1]["reason"] == "breaker_open" and read.attributes["resilience.outcome"] == "breaker_open"
        # Stopped while the receiver still listens: their exporters' last flush has somewhere to go.
        stack.chat.stop()
        stack.analytics.stop()
