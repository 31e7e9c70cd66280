"""Realistic chat users for Locust: `ChatUser` posts to /chat/ in multi-turn conversations (and
retries some posts with an Idempotency-Key), `StreamingChatUser` reads /chat/stream.

A streaming user's chats appear as two entries: `/chat/stream first delta` (the time until the
first piece of the reply arrived: what the person waits for) and `/chat/stream` (the whole stream,
until its `done` event).

Headless, with a summary, exiting non-zero on any failure:
    uv run locust -f load_tests/locustfile.py --host http://localhost:8000 \
        --headless -u 50 -r 10 -t 1m --only-summary --exit-code-on-error 1
Distributed (one master, N workers):
    uv run locust -f load_tests/locustfile.py --host http://localhost:8000 --master --expect-workers 2 \
        --headless -u 100 -r 20 -t 1m
    uv run locust -f load_tests/locustfile.py --worker --master-host 127.0.0.1    # once per worker
"""

from __future__ import annotations

import json
import random
import time
import uuid

from locust import HttpUser, between, task
from locust.clients import ResponseContextManager

GREETINGS = ("Hello, how are you?", "Hi there!", "Good morning", "Hey, what's new?", "Tell me something nice")
TIME_QUESTIONS = ("What time is it?", "Do you know the time?", "what's the time in UTC")
TURNS_PER_CONVERSATION = 8  # then the user starts a new conversation


class ChatUser(HttpUser):
    """One person chatting in conversations of a few turns: greetings, time questions, retried posts, stats look-ups."""

    wait_time = between(0.2, 1.5)

    def on_start(self) -> None:
        self.user_id = f"locust-{uuid.uuid4().hex[:12]}"
        self._new_conversation()

    def _new_conversation(self) -> None:
        self.session_id = str(uuid.uuid4())
        self.turns = 0

    def _chat(self, text: str, *, expect: str | None = None, name: str) -> None:
        if self.turns >= TURNS_PER_CONVERSATION:
            self._new_conversation()
        body = {"user_id": self.user_id, "text": text, "metadata": {"session_id": self.session_id}}
        with self.client.post("/chat/", json=body, name=name, catch_response=True) as response:
            self._check_reply(response, expect)

    def _remembers(self, reply: str) -> bool:
        # The offline model says which message of the conversation it answers; a real model does not.
        if "of this conversation" not in reply:
            return True
        return f"message {self.turns} of this conversation" in reply

    def _check_reply(self, response: ResponseContextManager, expect: str | None) -> None:
        if response.status_code != 200:
            response.failure(f"status {response.status_code}: {response.text[:200]}")
            return
        try:
            data = response.json()
        except ValueError:
            response.failure("reply is not JSON")
            return
        if data.get("user_id") != self.user_id:
            response.failure("user id not echoed")
        elif not str(data.get("reply", "")).strip():
            response.failure("empty reply")
        elif data.get("metadata", {}).get("session_id") != self.session_id:
            response.failure("session id not echoed")
        elif expect and expect not in data["reply"]:
            response.failure(f"reply lacks {expect!r}")
        else:
            self.turns += 1
            if self._remembers(data["reply"]):
                response.success()
            else:
                response.failure(f"the conversation was forgotten: turn {self.turns}, reply {data['reply'][:120]!r}")

    @task(6)
    def greet(self) -> None:
        self._chat(random.choice(GREETINGS), expect=" message", name="/chat/ greeting")  # "1 message", "5 messages"

    @task(2)
    def ask_time(self) -> None:
        self._chat(random.choice(TIME_QUESTIONS), name="/chat/ time")

    @task(1)
    def retried_post(self) -> None:
        """A post whose answer was lost on the way: the retry with the same key gets the same reply."""
        if self.turns >= TURNS_PER_CONVERSATION:
            self._new_conversation()
        body = {"user_id": self.user_id, "text": random.choice(GREETINGS), "metadata": {"session_id": self.session_id}}
        key = {"Idempotency-Key": uuid.uuid4().hex}
        first = self.client.post("/chat/", json=body, headers=key, name="/chat/ keyed")
        if first.status_code == 200:
            self.turns += 1
        with self.client.post("/chat/", json=body, headers=key, name="/chat/ keyed retry", catch_response=True) as retry:
            if first.status_code == 200 and (retry.status_code != 200 or retry.json() != first.json()):
                retry.failure(f"the retry did not replay the first reply (status {retry.status_code})")
            else:
                retry.success()

    @task(2)
    def look_up_analytics(self) -> None:
        with self.client.get(f"/users/{self.user_id}/analytics", name="/users/[id]/analytics", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}")
            elif response.json().get("user_id") != self.user_id or response.json().get("message_count", -1) < 0:
                response.failure("bad analytics view")
            else:
                response.success()


class StreamingChatUser(HttpUser):
    """One person chatting through POST /chat/stream, watching the reply arrive."""

    wait_time = between(0.2, 1.5)

    def on_start(self) -> None:
        self.user_id = f"locust-sse-{uuid.uuid4().hex[:12]}"
        self.session_id = str(uuid.uuid4())

    @task
    def chat_streamed(self) -> None:
        body = {"user_id": self.user_id, "text": random.choice(GREETINGS), "metadata": {"session_id": self.session_id}}
        started = time.perf_counter()
        with self.client.post("/chat/stream", json=body, stream=True, name="/chat/stream", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}: {response.text[:200]}")
                return
            first: float | None = None
            pieces: list[str] = []
            event = ""
            for line in response.iter_lines(decode_unicode=True):
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    data = json.loads(line.removeprefix("data: "))
                    if event == "delta":
                        if first is None:
                            first = time.perf_counter() - started
                            self._first_delta(first)
                        pieces.append(data["text"])
                    elif event == "done":
                        # Locust timed the headers (they leave with the first delta); this entry is the whole stream.
                        response.request_meta["response_time"] = (time.perf_counter() - started) * 1000
                        self._check_done(response, data, "".join(pieces))
                        return
                    else:
                        response.failure(f"{event} event: {data}")
                        return
            response.failure("the stream ended without a done event")

    def _first_delta(self, seconds: float) -> None:
        self.environment.events.request.fire(
            request_type="SSE",
            name="/chat/stream first delta",
            response_time=seconds * 1000,
            response_length=0,
            exception=None,
            context={},
        )

    def _check_done(self, response: ResponseContextManager, data: dict[str, object], streamed: str) -> None:
        if data.get("user_id") != self.user_id or data.get("reply") != streamed:
            response.failure("done does not match the deltas or the user")
        elif " message" not in streamed:
            response.failure("reply lacks its count")
        else:
            response.success()
