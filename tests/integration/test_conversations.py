"""Conversations against real uvicorn processes: memory, idempotent retries counted once, a Redis that dies."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid

import httpx
import pytest
import redis

from load_tests.processes import free_port

pytestmark = pytest.mark.integration


def say(stack, user: str, text: str, session: str = "s-1", **kw: object) -> httpx.Response:
    body = {"user_id": user, "text": text, "metadata": {"session_id": session}}
    return httpx.post(stack.chat.url + "/chat/", json=body, timeout=10, **kw)


def test_two_turns_remember_and_a_retried_post_is_counted_once(make_stack):
    stack = make_stack()
    first = say(stack, "newbie", "hello")
    second = say(stack, "newbie", "again")
    assert "message 1 of this conversation" in first.json()["reply"]
    assert "message 2 of this conversation" in second.json()["reply"]
    turns = httpx.get(stack.chat.url + "/sessions/s-1", params={"user_id": "newbie"}, timeout=5).json()["turns"]
    assert [t["text"] for t in turns] == ["hello", "again"]

    key = {"Idempotency-Key": f"retry-{uuid.uuid4().hex}"}
    paid = say(stack, "newbie", "once", headers=key)
    retried = [say(stack, "newbie", "once", headers=key) for _ in range(3)]
    assert all(r.status_code == 200 and r.json() == paid.json() for r in retried)
    stack.wait_drained()
    assert stack.analytics_count("newbie") == 3  # hello, again, once


def _redis_server(port: int, workdir) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return server
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)


@pytest.mark.redis
def test_a_redis_store_that_dies_costs_the_history_not_the_chat(make_stack, tmp_path):
    port = free_port()
    server = _redis_server(port, tmp_path)
    try:
        stack = make_stack(chat_extra={"CHAT_SESSIONS_URL": f"redis://127.0.0.1:{port}/0", "CHAT_SESSION_TIMEOUT": "0.3"})
        assert "message 2 of this conversation" in [say(stack, "alice", t) for t in ("a", "b")][1].json()["reply"]
    finally:
        server.kill()
        server.wait()
    started = time.perf_counter()
    # The breaker opens after 10 failed store calls in a row (CHAT_SESSION_BREAKER__MIN_CALLS): one
    # a chat, so the last two chats find it open.
    replies = [say(stack, "alice", f"down {i}") for i in range(12)]
    assert [r.status_code for r in replies] == [200] * 12
    assert all("message 1 of this conversation" in r.json()["reply"] for r in replies)
    assert time.perf_counter() - started < 8
    assert stack.logs().count("session_store_failed") == 1  # once per outage, not once per chat
    metrics = httpx.get(stack.chat.url + "/metrics", timeout=5).text
    assert 'chat_session_store_failures_total{operation="open",reason="breaker_open"}' in metrics


def test_a_chat_killed_mid_conversation_leaves_every_turn_whole_and_in_order(make_stack):
    """SIGKILL while 12 conversations are being written: each keeps whole turns, in order, and
    exactly the turns whose reply was sent (plus at most one committed whose 200 the kill cut off)."""
    stack = make_stack()
    conversations = [(f"talker{n}", f"talk-{n}") for n in range(12)]
    answered = dict.fromkeys(conversations, 0)
    cut_off = threading.Event()

    def talk(user: str, session: str) -> None:
        with httpx.Client(timeout=10) as http:
            while True:
                body = {"user_id": user, "text": f"turn {answered[user, session] + 1}", "metadata": {"session_id": session}}
                try:
                    response = http.post(stack.chat.url + "/chat/", json=body)
                except httpx.TransportError:
                    cut_off.set()
                    return  # chat died under this request
                assert response.status_code == 200, response.text
                answered[user, session] += 1

    talkers = [threading.Thread(target=talk, args=pair) for pair in conversations]
    for thread in talkers:
        thread.start()
    deadline = time.monotonic() + 20
    while min(answered.values()) < 3:  # every conversation is under way
        assert time.monotonic() < deadline
        time.sleep(0.02)
    stack.chat.kill()
    for thread in talkers:
        thread.join(15)
    assert cut_off.is_set()
    stack.chat.start()  # the same files: outbox and conversations

    for user, session in conversations:
        response = httpx.get(f"{stack.chat.url}/sessions/{session}", params={"user_id": user}, timeout=5)
        turns = response.json()["turns"]
        texts = [turn["text"] for turn in turns]
        assert texts == [f"turn {n}" for n in range(1, len(turns) + 1)], texts  # nothing interleaved, lost or doubled
        assert len(turns) - answered[user, session] in (0, 1), (len(turns), answered[user, session])
        for n, turn in enumerate(turns, start=1):  # no half-written turn: each has its own reply
            assert f"This is message {n} of this conversation." in turn["reply"], turn
        # The killed process's locks are freed at once, not after their lease: the conversation goes on.
        started = time.monotonic()
        body = {"user_id": user, "text": "after", "metadata": {"session_id": session}}
        after = httpx.post(stack.chat.url + "/chat/", json=body, timeout=10)
        assert after.status_code == 200, after.text
        assert f"This is message {len(turns) + 1} of this conversation." in after.json()["reply"]
        assert time.monotonic() - started < 2
