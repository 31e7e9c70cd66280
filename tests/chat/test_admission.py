"""Both spellings of the chat route are work routes: admitted, and shed when full."""

from __future__ import annotations

import asyncio

import httpx
import pytest


@pytest.mark.parametrize("path", ["/chat/", "/chat"])
async def test_a_full_chat_sheds_on_either_path_while_health_answers(chat_with, path):
    release = asyncio.Event()
    reads = 0

    async def slow_analytics(request: httpx.Request) -> httpx.Response:
        nonlocal reads
        if request.method == "GET":
            reads += 1
            await release.wait()
            return httpx.Response(200, json={"message_count": 1})
        return httpx.Response(200, json={"results": []})

    admission = {"min_limit": 1, "max_limit": 1, "initial_limit": 1, "queue_timeout": 0, "queue_max": 0}
    async with chat_with(httpx.MockTransport(slow_analytics), admission=admission) as chat:
        first = asyncio.create_task(chat.post(path, json={"user_id": "alice", "text": "hi"}))
        async with asyncio.timeout(5):
            while reads == 0:
                await asyncio.sleep(0.005)
        shed = await chat.post(path, json={"user_id": "bob", "text": "hi"})
        assert shed.status_code == 503
        assert shed.headers["retry-after"] == "1"
        assert reads == 1  # refused before any analytics (or model) work
        assert (await chat.get("/healthz")).status_code == 200
        release.set()
        assert (await first).status_code == 200


async def test_a_body_refused_as_too_large_is_not_counted_as_a_client_that_left(chat_with, analytics_transport):
    async def oversized():
        for _ in range(10):
            yield b"x" * 1024

    async with chat_with(analytics_transport, max_body_bytes=2048) as chat:
        refused = await chat.post("/chat/", content=oversized(), headers={"content-type": "application/json"})
        assert refused.status_code == 413
        metrics = (await chat.get("/metrics")).text
    assert 'reason="client_gone"' not in metrics
