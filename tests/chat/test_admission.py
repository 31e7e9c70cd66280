"""Both spellings of the chat route are work routes: admitted, and shed when full."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from pydantic import ValidationError

from chat_service.core.config import AdmissionSettings


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


async def test_a_chat_gives_the_event_loop_back_before_its_analytics_read(chat_with):
    # Under overload the server answers a refusal at the door only when the event loop comes
    # round to it: a chat's CPU run in one piece would hold every refusal behind it. The loop must
    # get its turn between the chat's parsing and checks and its analytics read.
    passes = 0
    at_read: list[int] = []

    async def analytics(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            at_read.append(passes)
            return httpx.Response(200, json={"message_count": 1})
        return httpx.Response(200, json={"results": []})

    async def count_passes(stop: asyncio.Event) -> None:
        nonlocal passes
        while not stop.is_set():
            passes += 1
            await asyncio.sleep(0)

    async with chat_with(httpx.MockTransport(analytics)) as chat:
        stop = asyncio.Event()
        ticker = asyncio.create_task(count_passes(stop))
        await asyncio.sleep(0)  # the ticker runs: from here every pass of the loop counts one
        start = passes
        answer = await chat.post("/chat/", json={"user_id": "alice", "text": "hi"})
        stop.set()
        await ticker
    assert answer.status_code == 200
    assert at_read[0] - start >= 1


@pytest.mark.parametrize("seconds", [0.0, 0.1, 1.0, 30.0])
def test_max_read_wait_is_off_or_long_enough_for_the_kernel_to_measure(seconds):
    assert AdmissionSettings(max_read_wait=seconds).max_read_wait == seconds


@pytest.mark.parametrize("seconds", [0.001, 0.05, -1.0])
def test_a_max_read_wait_the_kernel_cannot_measure_is_refused(seconds):
    # The kernel counts the wait in jiffies: at 10 ms a prompt read could look late.
    with pytest.raises(ValidationError):
        AdmissionSettings(max_read_wait=seconds)
