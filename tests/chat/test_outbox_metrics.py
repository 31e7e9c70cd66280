"""chat_outbox_stalled_seconds: how long records have waited without a delivery (the outbox's age alert)."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import httpx

from tests.chat.conftest import MESSAGE


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
        assert sample((await chat.get("/metrics")).text, "chat_outbox_writer_busy_seconds") == 0.0
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
        assert sample((await chat.get("/metrics")).text, "chat_outbox_writer_busy_seconds") == 0.0
