"""chat_outbox_stalled_seconds: how long records have waited without a delivery (the outbox's age alert)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time

import httpx

from tests.chat.conftest import MESSAGE, drained


def sample(metrics: str, series: str) -> float:
    (line,) = [line for line in metrics.splitlines() if line.startswith(series + " ")]
    return float(line.split()[-1])


async def test_the_outbox_reports_how_long_delivery_has_been_stuck_and_zero_once_it_drains(chat_with):
    analytics_down = True

    def analytics(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/messages/batch":
            return httpx.Response(503 if analytics_down else 200, json={})
        return httpx.Response(200, json={"message_count": 1})

    async with chat_with(httpx.MockTransport(analytics)) as chat:
        assert sample((await chat.get("/metrics")).text, "chat_outbox_stalled_seconds") == 0.0
        assert (await chat.post("/chat/", json=MESSAGE)).status_code == 200
        deadline = time.monotonic() + 10
        while sample(metrics := (await chat.get("/metrics")).text, "chat_outbox_stalled_seconds") < 0.3:
            assert time.monotonic() < deadline, "the stall never showed"
            await asyncio.sleep(0.05)
        assert sample(metrics, "chat_outbox_depth") == 1.0

        analytics_down = False
        while sample(metrics := (await chat.get("/metrics")).text, "chat_outbox_depth") > 0:
            assert time.monotonic() < deadline + 10, "the outbox never drained"
            await asyncio.sleep(0.05)
        assert sample(metrics, "chat_outbox_stalled_seconds") == 0.0


async def test_a_scrape_is_answered_while_a_stalled_disk_holds_the_outbox_writer(chat_with, tmp_path):
    def analytics(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/messages/batch":
            return httpx.Response(200, json={})
        return httpx.Response(200, json={"message_count": 1})

    async with chat_with(httpx.MockTransport(analytics)) as chat:
        assert sample((await chat.get("/metrics")).text, "chat_outbox_writer_busy_seconds") < 0.1
        # Another process holds the file's write lock: the writer thread waits on it (up to the
        # outbox's 2 s busy timeout) with the chat's append, and a count queued behind it.
        holder = sqlite3.connect(tmp_path / "outbox.sqlite3", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            reply = asyncio.create_task(chat.post("/chat/", json=MESSAGE))
            deadline = time.monotonic() + 1.5
            while sample((await chat.get("/metrics")).text, "chat_outbox_writer_busy_seconds") < 0.2:
                assert time.monotonic() < deadline, "no scrape saw the writer stalled"
            assert not reply.done(), "the scrape answered while the append still waited"
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert (await reply).status_code == 200, "the append went through once the lock was freed"
        assert sample((await chat.get("/metrics")).text, "chat_outbox_writer_busy_seconds") < 0.1


async def test_a_stalled_disk_makes_chat_refuse_and_unready_and_records_nothing_it_refused(chat_with, tmp_path):
    recorded: list[str] = []

    def analytics(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/messages/batch":
            recorded.extend(record["user_id"] for record in json.loads(request.content)["items"])
            return httpx.Response(200, json={})
        return httpx.Response(200, json={"message_count": 1})

    async with chat_with(httpx.MockTransport(analytics), outbox_append_timeout=0.5) as chat:
        holder = sqlite3.connect(tmp_path / "outbox.sqlite3", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # the writer thread takes the first append and waits on the lock
        try:
            first = asyncio.create_task(chat.post("/chat/", json={**MESSAGE, "user_id": "first"}))
            deadline = time.monotonic() + 1.5
            while sample((await chat.get("/metrics")).text, "chat_outbox_writer_busy_seconds") < 0.05:
                assert time.monotonic() < deadline and not first.done(), "the writer never waited on the lock"
                await asyncio.sleep(0.01)
            # queued behind it and withdrawn (or, on a slow machine, refused before the model runs)
            behind = await chat.post("/chat/", json={**MESSAGE, "user_id": "behind"})
            assert behind.status_code == 503 and behind.headers["retry-after"] == "1", "refused, not held"
            ready = await chat.get("/readyz")
            assert (ready.status_code, ready.json()["outbox"]) == (503, "stalled")
            refused = await chat.post("/chat/", json={**MESSAGE, "user_id": "refused"})
            assert refused.status_code == 503, "refused before the model runs while the writer is stalled"
            assert not first.done()
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        # Committed once the lock is free; 503 only if the lock outlived the outbox's 2 s busy timeout.
        answered = (await first).status_code
        assert answered in (200, 503)
        deadline = time.monotonic() + 10
        while (await chat.get("/readyz")).status_code != 200:  # ready again once the lock is taken in time
            assert time.monotonic() < deadline, "never ready again"
            await asyncio.sleep(0.05)
        await drained(chat)
    assert recorded == (["first"] if answered == 200 else []), "counted exactly when answered 200"
