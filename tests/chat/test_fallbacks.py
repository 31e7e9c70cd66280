"""Whatever analytics does, chat answers 200, with count 0 and the reason logged and counted."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from chat_service.analytics_client import RecordItem
from chat_service.outbox import Outbox
from tests.chat.conftest import drained, running_analytics
from tests.fakes.handlers import hang, refuse


@pytest.mark.parametrize(
    ("handler", "reason"),
    [
        (refuse, "connect"),
        (lambda _: httpx.Response(503), "status"),
        (lambda _: httpx.Response(500), "status"),
        (lambda _: httpx.Response(200, text="not json"), "invalid_response"),
        (lambda _: httpx.Response(200, json={"message_count": "five"}), "invalid_response"),
        (lambda _: httpx.Response(200, json={"message_count": -1}), "invalid_response"),
    ],
)
async def test_analytics_failures_give_count_zero(chat_with, handler, reason):
    async with chat_with(httpx.MockTransport(handler)) as chat:
        view = (await chat.get("/users/alice/analytics")).json()
        assert view == {"user_id": "alice", "message_count": 0, "source": reason}
        response = await chat.post("/chat/", json={"user_id": "alice", "text": "hi"})
        assert response.status_code == 200
        assert "0 messages" in response.json()["reply"]
        metrics = (await chat.get("/metrics")).text
        assert f'chat_analytics_calls_total{{operation="read",outcome="{reason}"}}' in metrics


async def test_a_hanging_analytics_costs_at_most_the_deadline(chat_with):
    async with chat_with(httpx.MockTransport(hang), analytics_read={"deadline": 0.2}) as chat:
        started = asyncio.get_running_loop().time()
        response = await chat.post("/chat/", json={"user_id": "alice", "text": "hi"})
        elapsed = asyncio.get_running_loop().time() - started
    assert response.status_code == 200 and "0 messages" in response.json()["reply"]
    assert elapsed < 0.2 + 0.5


async def test_the_breaker_opens_and_then_calls_skip_the_network(chat_with):
    calls = 0

    def failing(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        if request.method == "GET":
            calls += 1
        return httpx.Response(503)

    async with chat_with(httpx.MockTransport(failing), analytics_read={"breaker_min_calls": 3, "attempts": 1}) as chat:
        for _ in range(10):
            assert (await chat.post("/chat/", json={"user_id": "alice", "text": "hi"})).status_code == 200
        health = (await chat.get("/health/dependencies")).json()
    assert calls == 3
    assert health["analytics"]["read"]["breaker"] == "open"


async def test_records_wait_in_the_outbox_until_analytics_returns(tmp_path, chat_with):
    up = False
    async with running_analytics(tmp_path) as real:

        async def flaky(request: httpx.Request) -> httpx.Response:
            if not up:
                raise httpx.ConnectError("down")
            return await real.handle_async_request(request)

        async with chat_with(httpx.MockTransport(flaky), analytics_record={"breaker_reset": 0.05}) as chat:
            for _ in range(5):
                assert (await chat.post("/chat/", json={"user_id": "alice", "text": "hi"})).status_code == 200
            await delivery_failed(chat)
            assert (await chat.get("/health/dependencies")).json()["outbox"]["depth"] == 5
            up = True
            await drained(chat, timeout=10)
        async with httpx.AsyncClient(transport=real, base_url="http://analytics") as direct:
            assert (await direct.get("/analytics/alice")).json() == {"message_count": 5 + 5}


async def delivery_failed(chat: httpx.AsyncClient, timeout: float = 5.0) -> None:
    """Wait until the deliverer has tried to send records and fallen back."""
    failed = 'chat_analytics_fallbacks_total{reason="connect",target="analytics-record"}'
    async with asyncio.timeout(timeout):
        while failed not in (await chat.get("/metrics")).text:
            await asyncio.sleep(0.01)


async def test_a_record_analytics_refuses_is_set_aside_and_the_rest_get_through(tmp_path, chat_with):
    # A poison record already on disk (written by an older version, say): analytics answers 422.
    poison = Outbox(str(tmp_path / "outbox.sqlite3"), max_rows=10)
    await poison.open()
    await poison.append(RecordItem("alice", "poison", "not a timestamp"))
    await poison.close()
    async with (
        running_analytics(tmp_path) as real,
        chat_with(real) as chat,
        httpx.AsyncClient(transport=real, base_url="http://analytics") as direct,
    ):
        for _ in range(3):
            assert (await chat.post("/chat/", json={"user_id": "alice", "text": "hi"})).status_code == 200
        await drained(chat)
        assert (await chat.get("/health/dependencies")).json()["outbox"]["dead_letters"] == 1
        assert (await direct.get("/analytics/alice")).json() == {"message_count": 5 + 3}
