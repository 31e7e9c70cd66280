"""POST /chat/stream in process (the wire-level tests are in tests/integration/test_stream.py)."""

from __future__ import annotations

import json

import httpx
from httpx_sse import aconnect_sse

from chat_service.agent.offline_model import text_deltas
from tests.chat.conftest import drained


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
