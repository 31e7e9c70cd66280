"""POST /chat/stream in process (the wire-level tests are in tests/integration/test_stream.py)."""

from __future__ import annotations

import asyncio
import json

import httpx
from httpx_sse import aconnect_sse

from chat_service.agent.offline_model import text_deltas
from tests.chat.conftest import drained, model_settings


def test_the_offline_model_streams_a_few_words_at_a_time():
    text = "Hello! You have sent 2 messages so far.  How can I help?"
    pieces = list(text_deltas(text))
    assert "".join(pieces) == text
    assert pieces[:2] == ["Hello! You have", " sent 2 messages"]
    assert all(len(piece.split()) <= 3 for piece in pieces)
    assert list(text_deltas("")) == []


async def events_of(chat: httpx.AsyncClient, body: dict[str, object]) -> list[tuple[str, dict[str, object]]]:
    async with aconnect_sse(chat, "POST", "/chat/stream", json=body) as source:
        assert source.response.status_code == 200
        return [(event.event, json.loads(event.data)) async for event in source.aiter_sse()]


async def test_done_is_what_post_chat_answers_and_the_message_is_counted_once(chat):
    events = await events_of(chat, {"user_id": "bob", "text": "hi", "metadata": {"session_id": "s-1"}})
    assert [name for name, _ in events[:-1]] == ["delta"] * (len(events) - 1) and events[-1][0] == "done"
    done = events[-1][1]
    assert "".join(str(data["text"]) for _, data in events[:-1]) == done["reply"]
    await drained(chat)
    posted = (await chat.post("/chat/", json={"user_id": "bob", "text": "hi", "metadata": {"session_id": "s-1"}})).json()
    assert set(posted) == set(done) and posted["metadata"]["session_id"] == done["metadata"]["session_id"] == "s-1"
    assert "You have sent 3 messages" in str(done["reply"])  # bob's demo count, as POST /chat/ sees it
    assert "You have sent 4 messages" in posted["reply"]  # the streamed message was counted


async def test_refusals_before_the_stream_are_json(chat):
    blank = await chat.post("/chat/stream", json={"user_id": "bob", "text": " "})
    assert blank.status_code == 400 and blank.headers["content-type"] == "application/json"
    too_long = await chat.post("/chat/stream", json={"user_id": "bob", "text": "x" * 20_000})
    assert too_long.status_code == 422


def said(user: str, text: str, session: str = "s-stream") -> dict[str, object]:
    return {"user_id": user, "text": text, "metadata": {"session_id": session}}


async def test_a_streamed_conversation_remembers_its_earlier_turns(chat):
    first = (await events_of(chat, said("alice", "one")))[-1][1]
    posted = (await chat.post("/chat/", json=said("alice", "two"))).json()  # the two routes share the conversation
    third = (await events_of(chat, said("alice", "three")))[-1][1]
    assert "This is message 1 of this conversation." in str(first["reply"])
    assert "This is message 2 of this conversation." in posted["reply"]
    assert "This is message 3 of this conversation." in str(third["reply"])
    turns = (await chat.get("/sessions/s-stream", params={"user_id": "alice"})).json()["turns"]
    assert [(t["text"], t["reply"]) for t in turns] == [
        ("one", first["reply"]),
        ("two", posted["reply"]),
        ("three", third["reply"]),
    ]


async def keyed_events(chat: httpx.AsyncClient, body: dict[str, object], key: str) -> list[tuple[str, dict[str, object]]]:
    async with aconnect_sse(chat, "POST", "/chat/stream", json=body, headers={"Idempotency-Key": key}) as source:
        assert source.response.status_code == 200
        return [(event.event, json.loads(event.data)) async for event in source.aiter_sse()]


async def test_a_retried_stream_replays_the_stored_reply_as_one_delta_and_counts_once(chat):
    body = said("alice", "pay once")
    first = await keyed_events(chat, body, "stream-1")
    await drained(chat)
    counted = (await chat.get("/users/alice/analytics")).json()["message_count"]
    again = await keyed_events(chat, body, "stream-1")
    done = first[-1][1]
    assert len(first) > 2 and again == [("delta", {"text": done["reply"]}), ("done", done)]
    posted = await chat.post("/chat/", json=body, headers={"Idempotency-Key": "stream-1"})  # one key, either route
    assert posted.status_code == 200 and posted.json() == done
    await drained(chat)
    assert (await chat.get("/users/alice/analytics")).json()["message_count"] == counted
    turns = (await chat.get("/sessions/s-stream", params={"user_id": "alice"})).json()["turns"]
    assert [t["text"] for t in turns] == ["pay once"]  # replays are not turns
    reused = await chat.post("/chat/stream", json=said("alice", "other"), headers={"Idempotency-Key": "stream-1"})
    assert reused.status_code == 422 and reused.headers["content-type"] == "application/json"
    assert reused.json()["detail"][0]["type"] == "key_reused"
    # A key first used on POST /chat/ replays on the stream too.
    await chat.post("/chat/", json=said("bob", "hi"), headers={"Idempotency-Key": "post-1"})
    replayed = await keyed_events(chat, said("bob", "hi"), "post-1")
    assert [name for name, _ in replayed] == ["delta", "done"]


async def test_a_busy_conversation_or_running_key_is_a_json_409_before_the_stream(chat_with, analytics_transport, models):
    primary, _ = models
    primary.switch(think=0.6)
    settings = model_settings(models, fallback=False, session_lock_wait=0.2)
    async with chat_with(analytics_transport, **settings) as chat:
        slow = asyncio.create_task(chat.post("/chat/stream", json=said("alice", "slow"), headers={"Idempotency-Key": "k"}))
        while primary.requests == 0:
            await asyncio.sleep(0.01)
        busy = await chat.post("/chat/stream", json=said("alice", "meanwhile"))
        running = await chat.post("/chat/stream", json=said("alice", "slow"), headers={"Idempotency-Key": "k"})
        assert (await slow).status_code == 200
    assert busy.status_code == 409 and busy.headers["content-type"] == "application/json"
    assert "still being answered" in busy.json()["detail"]
    assert running.status_code == 409 and running.headers["content-type"] == "application/json"


async def test_a_stream_that_breaks_stores_nothing_and_frees_the_conversation_and_key(chat_with, analytics_transport, models):
    primary, _ = models
    async with chat_with(analytics_transport, **model_settings(models, fallback=False)) as chat:
        primary.switch(mode="cut_mid")
        broken = await keyed_events(chat, said("alice", "lost"), "k-cut")
        assert [name for name, _ in broken] == ["delta", "error"]
        primary.switch(mode="ok")
        assert (await chat.get("/sessions/s-stream", params={"user_id": "alice"})).status_code == 404
        again = await keyed_events(chat, said("alice", "lost"), "k-cut")  # the key was freed: it runs again
        assert again[-1][0] == "done"
        turns = (await chat.get("/sessions/s-stream", params={"user_id": "alice"})).json()["turns"]
    assert [t["text"] for t in turns] == ["lost"]
