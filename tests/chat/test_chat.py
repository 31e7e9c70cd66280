"""POST /chat/ and friends, end to end in process, against the real analytics app."""

from __future__ import annotations

import asyncio
import random
import re
from datetime import UTC, datetime

import httpx

from chat_service.agent.agent import BASE_INSTRUCTIONS, build_agent
from chat_service.agent.offline_model import OfflineModel
from chat_service.models import VISIBLE_CHARACTER, ChatMessage, is_blank
from tests.chat.conftest import MESSAGE, drained


async def test_root_and_users_as_in_the_tutorial(chat):
    assert (await chat.get("/")).json() == {
        "message": "Welcome to the DACA Chat Service! Access /docs for the API documentation."
    }
    assert (await chat.get("/users/alice?role=admin")).json() == {"user_id": "alice", "role": "admin"}
    assert (await chat.get("/users/bob")).json() == {"user_id": "bob", "role": "guest"}


async def test_the_tutorials_example_is_personalized_and_keeps_the_session(chat):
    response = await chat.post("/chat/", json=MESSAGE)
    assert response.status_code == 200
    body = response.json()
    assert body["user_id"] == "alice"
    assert "5 messages" in body["reply"]
    assert body["metadata"]["session_id"] == MESSAGE["metadata"]["session_id"]
    stamp = datetime.fromisoformat(body["metadata"]["timestamp"])
    assert stamp.tzinfo is not None and stamp.utcoffset().total_seconds() == 0


async def test_counts_grow_by_one_per_chat(chat):
    for expected in (3, 4, 5, 6):
        await drained(chat)
        reply = (await chat.post("/chat/", json={"user_id": "bob", "text": "hi"})).json()["reply"]
        assert f"{expected} messages" in reply
    await drained(chat)
    assert (await chat.get("/users/bob/analytics")).json() == {"user_id": "bob", "message_count": 7, "source": "analytics"}


async def test_a_new_user_starts_at_zero_and_then_has_1_message(chat):
    reply = (await chat.post("/chat/", json={"user_id": "newcomer", "text": "hi"})).json()["reply"]
    assert "0 messages" in reply
    await drained(chat)
    reply = (await chat.post("/chat/", json={"user_id": "newcomer", "text": "what are my stats?"})).json()["reply"]
    assert reply == "Hello! You have sent 1 message so far. This is message 1 of this conversation. Analytics says: 1 message."


async def test_time_questions_use_the_tool(chat):
    reply = (await chat.post("/chat/", json={"user_id": "bob", "text": "What time is it?"})).json()["reply"]
    match = re.search(r"The current time is (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC", reply)
    assert match, reply
    told = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - told).total_seconds()) < 60
    assert "3 messages" in reply


async def test_analytics_questions_use_the_analytics_tool(chat):
    reply = (await chat.post("/chat/", json={"user_id": "alice", "text": "show my stats"})).json()["reply"]
    assert "Analytics says: 5 messages" in reply


async def test_concurrent_users_each_get_their_own_count(chat_with):
    """The tutorial mutates one shared agent: under concurrency users get each other's counts."""
    counts = {f"user{i}": i * 7 for i in range(10)}

    async def analytics(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(random.uniform(0, 0.02))  # interleave the requests
        if request.method == "POST":
            return httpx.Response(200, json={"results": []})
        user = request.url.path.rsplit("/", 1)[1]
        return httpx.Response(200, json={"message_count": counts[user]})

    # 100 at once on a cold start: admission would rightly queue and shed some, and on a slow machine
    # some reads would pass the 0.5 s deadline and fall back to zero; this test is about isolation.
    generous = {"deadline": 10.0, "read_timeout": 10.0, "pool_timeout": 10.0}
    async with chat_with(httpx.MockTransport(analytics), admission={"enabled": False}, analytics_read=generous) as chat:
        users = [f"user{i % 10}" for i in range(100)]
        replies = await asyncio.gather(*(chat.post("/chat/", json={"user_id": u, "text": "hi"}) for u in users))
    for user, reply in zip(users, replies, strict=True):
        assert f"You have sent {counts[user]} messages" in reply.json()["reply"], (user, reply.json())


def test_personalizing_never_touches_the_shared_agent():
    from chat_service.agent.agent import personalized

    agent = build_agent(OfflineModel())
    tools = agent.tools
    copy = personalized(agent, 42)
    assert "42 messages" in copy.instructions
    assert agent.instructions == BASE_INSTRUCTIONS
    assert agent.tools is tools and [t.name for t in tools] == ["get_current_time", "get_user_analytics"]


async def test_empty_text_is_the_tutorials_400(chat):
    # \u3000 is space to both JSON Schema and Python; \ufeff only to JSON Schema, \x85 and \x1c only to Python.
    for text in ("", "   ", "\n\t", "\u3000", "\ufeff", "\x85", " \x1c "):
        response = await chat.post("/chat/", json={"user_id": "bob", "text": text})
        assert response.status_code == 400, repr(text)
        assert response.json() == {"detail": "Message text cannot be empty"}


# ECMA-262's WhiteSpace and LineTerminator, which is what `\s` means in a JSON Schema pattern.
ECMA_SPACE = {*"\t\n\v\f\r \xa0\u1680\u2028\u2029\u202f\u205f\u3000\ufeff", *map(chr, range(0x2000, 0x200B))}


def test_blank_means_space_to_json_schema_or_to_python():
    # A client validating against the schema and the server must agree: text that is space to
    # either is blank (400), anything else is a message.
    assert ChatMessage.model_json_schema()["properties"]["text"]["pattern"] == VISIBLE_CHARACTER
    for code in [*range(0x3100), 0xFEFF, 0xFFFD, 0x1F600]:
        character = chr(code)
        assert is_blank(character) == (character.isspace() or character in ECMA_SPACE), hex(code)
    assert not is_blank("\x85 hi\ufeff")


async def test_request_ids_reach_analytics_and_come_back(chat_with):
    seen: list[str | None] = []

    def analytics(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("x-request-id"))
        return httpx.Response(200, json={"message_count": 1})

    async with chat_with(httpx.MockTransport(analytics)) as chat:
        response = await chat.post("/chat/", json={"user_id": "bob", "text": "hi"}, headers={"X-Request-ID": "req-42"})
        assert response.headers["x-request-id"] == "req-42"
        generated = await chat.get("/users/bob/analytics")
        assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["x-request-id"])
    assert seen[0] == "req-42"
    assert generated.headers["x-request-id"] in seen


async def test_the_offline_model_streams_too():
    from agents import RunConfig, Runner

    from chat_service.agent.agent import PersonalizedAgents
    from chat_service.agent.tools import ChatContext

    agents = PersonalizedAgents(build_agent(OfflineModel()), limit=1)
    agent = agents.for_count(3)
    again = agents.for_count(3)
    # Each run its own Agent object (the SDK's per-object checks stay O(1)), sharing one cached copy.
    assert again is not agent
    assert again.instructions is agent.instructions and again.tools is agent.tools, "copies are made once per count"
    assert agents.for_count(4).instructions is not agent.instructions
    assert agents.for_count(3).instructions is not agent.instructions, "the cache starts over at its limit"
    result = Runner.run_streamed(
        agent, "what time is it?", context=ChatContext("u", None), run_config=RunConfig(tracing_disabled=True)
    )
    async for _ in result.stream_events():
        pass
    assert "You have sent 3 messages" in result.final_output and "UTC" in result.final_output
