"""Conversations in process: memory, isolation, bounds, failures, GET/DELETE and idempotent chats (real SQLite)."""

from __future__ import annotations

import asyncio
import re
import sqlite3

import jwt
import pytest

from chat_service.sessions._keys import record_id
from load_tests.processes import free_port

from .conftest import drained, model_settings


def say(user: str, text: str, session: str = "s-1") -> dict[str, object]:
    return {"user_id": user, "text": text, "metadata": {"session_id": session}}


async def test_the_second_message_is_message_2_of_this_conversation(chat):
    first = await chat.post("/chat/", json=say("alice", "hi"))
    second = await chat.post("/chat/", json=say("alice", "again"))
    assert "This is message 1 of this conversation." in first.json()["reply"]
    assert "This is message 2 of this conversation." in second.json()["reply"]
    other = await chat.post("/chat/", json=say("alice", "new", session="s-2"))
    assert "message 1 of this conversation" in other.json()["reply"]


async def test_a_message_without_a_session_id_is_a_one_off_that_nothing_stores(chat, tmp_path):
    replies = [(await chat.post("/chat/", json={"user_id": "alice", "text": "hi"})).json() for _ in range(2)]
    assert all("This is message 1 of this conversation." in r["reply"] for r in replies)
    session_ids = {r["metadata"]["session_id"] for r in replies}
    assert len(session_ids) == 2  # each a new UUID, and neither kept for CHAT_SESSION_TTL
    for session_id in session_ids:
        assert (await chat.get(f"/sessions/{session_id}", params={"user_id": "alice"})).status_code == 404
    with sqlite3.connect(tmp_path / "chat-sessions.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM conversation_items").fetchone() == (0,)


async def test_the_same_session_id_of_another_user_is_another_conversation(chat):
    await chat.post("/chat/", json=say("alice", "secret"))
    bob = await chat.post("/chat/", json=say("bob", "hello"))
    assert "message 1 of this conversation" in bob.json()["reply"]
    assert (await chat.get("/sessions/s-1", params={"user_id": "bob"})).json()["turns"][0]["text"] == "hello"
    assert [t["text"] for t in (await chat.get("/sessions/s-1", params={"user_id": "alice"})).json()["turns"]] == ["secret"]


async def test_get_lists_turns_with_timestamps_and_delete_forgets(chat):
    for text in ("one", "two"):
        await chat.post("/chat/", json=say("alice", text))
    body = (await chat.get("/sessions/s-1", params={"user_id": "alice"})).json()
    assert body["user_id"] == "alice" and body["session_id"] == "s-1"
    assert [t["text"] for t in body["turns"]] == ["one", "two"]
    assert body["turns"][1]["reply"].startswith("Hello!") and body["turns"][1]["at"].endswith("+00:00")
    assert (await chat.delete("/sessions/s-1", params={"user_id": "alice"})).status_code == 204
    assert (await chat.get("/sessions/s-1", params={"user_id": "alice"})).status_code == 404
    again = await chat.post("/chat/", json=say("alice", "fresh"))
    assert "message 1 of this conversation" in again.json()["reply"]


async def test_bad_session_ids_and_users_are_422(chat):
    assert (await chat.get("/sessions/s-1")).status_code == 422
    assert (await chat.get("/sessions/bad id", params={"user_id": "alice"})).status_code == 422


async def test_history_keeps_the_most_recent_max_items(chat_with, analytics_transport, tmp_path):
    async with chat_with(analytics_transport, session_max_items=4) as chat:
        replies = [(await chat.post("/chat/", json=say("alice", f"m{i}"))).json()["reply"] for i in range(5)]
        turns = (await chat.get("/sessions/s-1", params={"user_id": "alice"})).json()["turns"]
    assert [t["text"] for t in turns] == ["m3", "m4"]  # two items a turn: user and assistant
    assert "message 3 of this conversation" in replies[4]  # the model saw the 2 turns kept, then this one
    rows = sqlite3.connect(tmp_path / "chat-sessions.sqlite3").execute("select count(*) from conversation_items").fetchone()
    assert rows == (4,)


async def test_a_conversation_idle_longer_than_the_ttl_is_forgotten(chat_with, analytics_transport):
    async with chat_with(analytics_transport, session_ttl=1.0) as chat:
        await chat.post("/chat/", json=say("alice", "hi"))
        await asyncio.sleep(2.6)  # SQLite's CURRENT_TIMESTAMP has whole seconds; the sweep runs every ttl/4
        assert (await chat.get("/sessions/s-1", params={"user_id": "alice"})).status_code == 404
        assert "message 1 of this conversation" in (await chat.post("/chat/", json=say("alice", "back"))).json()["reply"]


async def test_a_store_that_is_down_costs_the_history_not_the_chat(chat_with, analytics_transport):
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    async with chat_with(analytics_transport, sessions_url=dead, session_timeout=0.5) as chat:
        replies = [await chat.post("/chat/", json=say("alice", f"m{i}")) for i in range(12)]
        assert [r.status_code for r in replies] == [200] * 12
        assert all("message 1 of this conversation" in r.json()["reply"] for r in replies)
        assert (await chat.get("/sessions/s-1", params={"user_id": "alice"})).status_code == 503
        keyed = await chat.post("/chat/", json=say("alice", "k"), headers={"Idempotency-Key": "k-1"})
        assert keyed.status_code == 200
        metrics = (await chat.get("/metrics")).text
    failures = {
        reason: float(count)
        for reason, count in re.findall(r'chat_session_store_failures_total\{operation="open",reason="(\w+)"\} (\S+)', metrics)
    }
    # The breaker spares the dead store after 10 failed calls in a row (CHAT_SESSION_BREAKER__MIN_CALLS):
    # each chat tried the store once, and the last two and the keyed one found the breaker open.
    assert sum(count for reason, count in failures.items() if reason != "breaker_open") == 10
    assert failures["breaker_open"] == 3


async def test_a_failed_run_leaves_the_history_as_it_was(chat_with, analytics_transport, models):
    primary, _ = models
    async with chat_with(analytics_transport, **model_settings(models, fallback=False)) as chat:
        assert (await chat.post("/chat/", json=say("alice", "one"))).status_code == 200
        primary.switch(mode="503")
        assert (await chat.post("/chat/", json=say("alice", "lost"))).status_code == 503
        primary.switch(mode="ok")
        turns = (await chat.get("/sessions/s-1", params={"user_id": "alice"})).json()["turns"]
    assert [t["text"] for t in turns] == ["one"]


async def test_a_second_message_waits_for_the_run_then_gets_409(chat_with, analytics_transport, models):
    primary, _ = models
    primary.switch(think=0.6)
    settings = model_settings(models, fallback=False, session_lock_wait=0.2)
    async with chat_with(analytics_transport, **settings) as chat:
        first = asyncio.create_task(chat.post("/chat/", json=say("alice", "slow")))
        while primary.requests == 0:
            await asyncio.sleep(0.01)
        busy = await chat.post("/chat/", json=say("alice", "meanwhile"))
        other = await chat.post("/chat/", json=say("alice", "elsewhere", session="s-2"))
        assert (await first).status_code == 200
        assert busy.status_code == 409 and "still being answered" in busy.json()["detail"]
        assert other.status_code == 200  # only the same conversation waits


async def test_a_retried_post_answers_the_stored_reply_and_counts_once(chat, analytics_transport):
    key = {"Idempotency-Key": "retry-1"}
    first = await chat.post("/chat/", json=say("alice", "pay once"), headers=key)
    second = await chat.post("/chat/", json=say("alice", "pay once"), headers=key)
    assert first.status_code == second.status_code == 200 and first.json() == second.json()
    await drained(chat)
    analytics = (await chat.get("/users/alice/analytics")).json()["message_count"]
    third = await chat.post("/chat/", json=say("alice", "pay once"), headers={"Idempotency-Key": "retry-2"})
    assert "message 2 of this conversation" in third.json()["reply"]  # the replay was not a turn
    await drained(chat)
    assert (await chat.get("/users/alice/analytics")).json()["message_count"] == analytics + 1
    other_body = await chat.post("/chat/", json=say("alice", "something else"), headers=key)
    assert other_body.status_code == 422 and other_body.json()["detail"][0]["type"] == "key_reused"
    bob = await chat.post("/chat/", json=say("bob", "pay once"), headers=key)  # keys are per user
    assert bob.status_code == 200 and bob.json()["user_id"] == "bob"


async def test_a_retry_gets_its_stored_reply_even_past_the_rate_limit_and_a_refused_first_try_frees_its_key(
    chat_with, analytics_transport
):
    async with chat_with(analytics_transport, rate_limit_per_minute=1) as chat:
        first = await chat.post("/chat/", json=say("alice", "once"), headers={"Idempotency-Key": "paid"})
        retried = await chat.post("/chat/", json=say("alice", "once"), headers={"Idempotency-Key": "paid"})
        assert first.status_code == retried.status_code == 200 and retried.json() == first.json()
        refused = await chat.post("/chat/", json=say("alice", "more"), headers={"Idempotency-Key": "later"})
        assert refused.status_code == 429
        again = await chat.post("/chat/", json=say("alice", "more"), headers={"Idempotency-Key": "later"})
        assert again.status_code == 429  # the refusal freed the key: not a 409 "still running"


async def test_a_key_still_running_is_409_and_a_failed_run_frees_it(chat_with, analytics_transport, models):
    primary, _ = models
    primary.switch(think=0.6)
    key = {"Idempotency-Key": "k-run"}
    async with chat_with(analytics_transport, **model_settings(models, fallback=False)) as chat:
        first = asyncio.create_task(chat.post("/chat/", json=say("alice", "x"), headers=key))
        while primary.requests == 0:
            await asyncio.sleep(0.01)
        running = await chat.post("/chat/", json=say("alice", "x"), headers=key)
        assert running.status_code == 409 and "still being answered" in running.json()["detail"]
        assert (await first).status_code == 200
        primary.switch(mode="503", think=0.0)
        failed_key = {"Idempotency-Key": "k-fail"}
        assert (await chat.post("/chat/", json=say("alice", "y"), headers=failed_key)).status_code == 503
        primary.switch(mode="ok")
        assert (await chat.post("/chat/", json=say("alice", "y"), headers=failed_key)).status_code == 200


def test_the_record_id_of_a_key_is_the_same_everywhere_and_per_user():
    assert record_id("alice", "k") == record_id("alice", "k") != record_id("bob", "k")
    assert record_id("a:b", "c") != record_id("a", "b:c")


@pytest.mark.parametrize("header", ["", "bad key", "x" * 129])
async def test_a_malformed_idempotency_key_is_422(chat, header):
    response = await chat.post("/chat/", json=say("alice", "hi"), headers={"Idempotency-Key": header})
    assert response.status_code == 422


async def test_with_auth_on_a_conversation_is_the_subjects_own(chat_with, analytics_transport):
    secret = "s" * 32
    alice = {"Authorization": "Bearer " + jwt.encode({"sub": "alice", "exp": 2_000_000_000}, secret, algorithm="HS256")}
    async with chat_with(analytics_transport, auth_jwt_secret=secret) as chat:
        assert (await chat.post("/chat/", json=say("alice", "mine"), headers=alice)).status_code == 200
        assert (await chat.post("/chat/", json=say("bob", "as bob"), headers=alice)).status_code == 403
        assert (await chat.get("/sessions/s-1", params={"user_id": "alice"}, headers=alice)).status_code == 200
        assert (await chat.get("/sessions/s-1", params={"user_id": "bob"}, headers=alice)).status_code == 403
        assert (await chat.delete("/sessions/s-1", params={"user_id": "bob"}, headers=alice)).status_code == 403
        assert (await chat.get("/sessions/s-1", params={"user_id": "alice"})).status_code == 401
