"""What operators read: metrics, dependencies view, readiness."""

from __future__ import annotations

import re

import httpx

from tests.fakes.handlers import refuse


async def test_metrics_cover_requests_analytics_outcomes_llm_and_outbox(chat_with, analytics_transport):
    async with chat_with(analytics_transport) as chat:
        await chat.post("/chat/", json={"user_id": "alice", "text": "hi"})
        await chat.post("/chat/", json={"user_id": "bob", "text": ""})
        metrics = (await chat.get("/metrics")).text
    assert 'http_requests_total{method="POST",route="/chat/",status="200"} 1.0' in metrics
    assert 'http_requests_total{method="POST",route="/chat/",status="400"} 1.0' in metrics
    assert 'http_request_duration_seconds_count{method="POST",route="/chat/"} 2.0' in metrics
    assert 'chat_analytics_calls_total{operation="read",outcome="ok"} 1.0' in metrics
    assert "chat_llm_run_seconds_count 1.0" in metrics
    assert re.search(r"^chat_outbox_depth [01]\.0$", metrics, re.MULTILINE)  # 1 while the record is in flight
    assert re.search(r"^chat_outbox_dead_letters 0\.0$", metrics, re.MULTILINE)
    # Every breaker is published from the start, before any opens: dashboards and alerts see them.
    for target in ("analytics-read", "analytics-record", "sessions"):
        assert f'chat_breaker_state{{target="{target}"}} 0.0' in metrics


async def test_breaker_retry_and_fallback_metrics(chat_with):
    def down(_: httpx.Request) -> httpx.Response:
        return httpx.Response(503)

    async with chat_with(httpx.MockTransport(down), analytics_read={"breaker_min_calls": 2}) as chat:
        await chat.post("/chat/", json={"user_id": "alice", "text": "hi"})
        metrics = (await chat.get("/metrics")).text
        dependencies = (await chat.get("/health/dependencies")).json()
    assert 'chat_breaker_state{target="analytics-read"} 2.0' in metrics
    assert 'chat_breaker_transitions_total{state="open",target="analytics-read"} 1.0' in metrics
    assert 'chat_analytics_retries_total{target="analytics-read"}' in metrics
    assert 'chat_analytics_fallbacks_total{reason="breaker_open",target="analytics-read"} 1.0' in metrics
    assert dependencies["analytics"]["read"]["breaker"] == "open"
    assert dependencies["llm"] == {"provider": "offline", "endpoints": [], "offline_fallback": False}


async def test_chat_is_ready_while_analytics_is_down(chat_with):
    async with chat_with(httpx.MockTransport(refuse)) as chat:
        assert (await chat.get("/readyz")).json() == {"status": "ok"}
        assert (await chat.get("/healthz")).json() == {"status": "ok"}
