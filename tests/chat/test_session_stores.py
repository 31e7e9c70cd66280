"""The same conversation contract on every store, and across replicas sharing one (real SQLite, PostgreSQL, Redis)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from ..conftest import REDIS_URL, postgres_schema
from .conftest import model_settings, running_chat
from .test_sessions import say


async def test_memory_bounds_and_forgetting_on_each_store(tmp_path, analytics_transport, store_url):
    user = f"u-{uuid.uuid4().hex[:8]}"
    async with running_chat(tmp_path, analytics_transport, sessions_url=store_url, session_max_items=4) as chat:
        replies = [(await chat.post("/chat/", json=say(user, f"m{i}"))).json()["reply"] for i in range(4)]
        turns = (await chat.get("/sessions/s-1", params={"user_id": user})).json()["turns"]
        assert (await chat.delete("/sessions/s-1", params={"user_id": user})).status_code == 204
        gone = await chat.get("/sessions/s-1", params={"user_id": user})
    assert "message 2 of this conversation" in replies[1]
    assert "message 3 of this conversation" in replies[3]  # 2 turns kept (4 items) + this one
    assert [t["text"] for t in turns] == ["m2", "m3"]
    assert gone.status_code == 404


async def test_replicas_sharing_a_store_share_locks_and_keys(tmp_path, analytics_transport, store_url, models):
    primary, _ = models
    user = f"u-{uuid.uuid4().hex[:8]}"
    settings = model_settings(models, fallback=False, sessions_url=store_url, session_lock_wait=0.2)
    async with (
        running_chat(tmp_path / "a", analytics_transport, **settings) as one,
        running_chat(tmp_path / "b", analytics_transport, **settings) as two,
    ):
        primary.switch(think=0.6)
        key = {"Idempotency-Key": "shared-key"}
        first = asyncio.create_task(one.post("/chat/", json=say(user, "slow"), headers=key))
        while primary.requests == 0:
            await asyncio.sleep(0.01)
        busy = await two.post("/chat/", json=say(user, "meanwhile"))
        in_flight = await two.post("/chat/", json=say(user, "slow"), headers=key)
        answered = await first
        primary.switch(think=0.0)
        replayed = await two.post("/chat/", json=say(user, "slow"), headers=key)
        after = await two.post("/chat/", json=say(user, "next"))
    assert answered.status_code == 200
    assert busy.status_code == 409 and in_flight.status_code == 409
    assert replayed.status_code == 200 and replayed.json() == answered.json()
    assert primary.requests == 2  # the slow run and "next": the replay ran nothing
    assert after.status_code == 200


@pytest.mark.redis
async def test_redis_expires_a_conversation_after_the_ttl(tmp_path, analytics_transport):
    user = f"u-{uuid.uuid4().hex[:8]}"
    async with running_chat(tmp_path, analytics_transport, sessions_url=REDIS_URL, session_ttl=1.0) as chat:
        await chat.post("/chat/", json=say(user, "hi"))
        assert (await chat.get("/sessions/s-1", params={"user_id": user})).status_code == 200
        await asyncio.sleep(1.3)
        assert (await chat.get("/sessions/s-1", params={"user_id": user})).status_code == 404


@pytest.mark.postgres
async def test_postgres_sweeps_a_conversation_idle_longer_than_the_ttl(tmp_path, analytics_transport):
    user = f"u-{uuid.uuid4().hex[:8]}"
    async with postgres_schema() as url, running_chat(tmp_path, analytics_transport, sessions_url=url, session_ttl=1.0) as chat:
        await chat.post("/chat/", json=say(user, "hi"))
        assert (await chat.get("/sessions/s-1", params={"user_id": user})).status_code == 200
        await asyncio.sleep(1.8)  # the sweep runs every ttl/4
        assert (await chat.get("/sessions/s-1", params={"user_id": user})).status_code == 404
