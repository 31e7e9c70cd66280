"""The outbox as chat uses it: off the event loop, refusing early, ready only when it can record."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time

import httpx

from tests.chat.conftest import drained, running_analytics
from tests.fakes.disk import fill, small_disk

CHAT = {"user_id": "alice", "text": "hi"}


async def test_chat_keeps_serving_while_another_worker_holds_the_outbox_write_lock(tmp_path, chat):
    assert (await chat.post("/chat/", json=CHAT)).status_code == 200  # the file exists, warmed up
    other = sqlite3.connect(tmp_path / "outbox.sqlite3", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        waiting = asyncio.ensure_future(chat.post("/chat/", json=CHAT))
        held_since = time.monotonic()
        for _ in range(10):
            started = time.monotonic()
            assert (await chat.get("/healthz")).status_code == 200
            assert time.monotonic() - started < 0.2, "the event loop was blocked"
        await asyncio.sleep(0.3 - (time.monotonic() - held_since))
        assert not waiting.done(), "the chat waits for its record to be committed"
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert (await waiting).status_code == 200


def _llm_runs(metrics: str) -> float:
    match = re.search(r"^chat_llm_run_seconds_count (\S+)$", metrics, re.MULTILINE)
    assert match
    return float(match.group(1))


async def test_an_outbox_at_its_bound_refuses_chats_before_the_model_runs_until_it_drains(tmp_path, chat_with):
    up = False
    async with running_analytics(tmp_path) as real:

        async def flaky(request: httpx.Request) -> httpx.Response:
            if not up:
                raise httpx.ConnectError("down")
            return await real.handle_async_request(request)

        settings = {"outbox_max_rows": 2, "analytics_record": {"breaker_reset": 0.05}}
        async with chat_with(httpx.MockTransport(flaky), **settings) as chat:
            assert [(await chat.post("/chat/", json=CHAT)).status_code for _ in range(2)] == [200, 200]
            refused = await chat.post("/chat/", json=CHAT)
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
            ready = await chat.get("/readyz")
            assert (ready.status_code, ready.json()) == (503, {"status": "unavailable", "outbox": "at_bound"})
            runs = _llm_runs((await chat.get("/metrics")).text)
            assert (await chat.post("/chat/", json=CHAT)).status_code == 503
            assert _llm_runs((await chat.get("/metrics")).text) == runs, "refused before running the model"
            up = True
            await drained(chat, timeout=10)
            async with asyncio.timeout(5):
                while (await chat.get("/readyz")).status_code != 200:
                    await asyncio.sleep(0.05)
            assert (await chat.post("/chat/", json=CHAT)).status_code == 200


async def test_chat_starts_on_a_full_disk_answers_503_and_recovers_when_space_returns(tmp_path, chat_with):
    with small_disk(tmp_path / "disk", "2m") as disk:
        filler = fill(disk)
        async with (
            running_analytics(tmp_path) as analytics,
            chat_with(analytics, outbox_path=str(disk / "outbox.sqlite3")) as chat,
        ):
            assert (await chat.get("/healthz")).status_code == 200
            ready = await chat.get("/readyz")
            assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
            refused = await chat.post("/chat/", json=CHAT)
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
            filler.unlink()
            async with asyncio.timeout(5):
                while (await chat.get("/readyz")).status_code != 200:
                    await asyncio.sleep(0.05)
            assert (await chat.post("/chat/", json=CHAT)).status_code == 200
            await drained(chat)
