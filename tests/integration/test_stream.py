"""POST /chat/stream against real processes, read by a real SSE client (httpx-sse).

Two chat services share one analytics: one on the offline model, one on the OpenAI-compatible
path in front of the fake model server (load_tests/fake_model.py), whose modes make a stream
stall or break after its first word and which reports when a stream's client hung up.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from httpx_sse import ServerSentEvent, connect_sse

from chat_service.agent.wording import messages_phrase
from load_tests.fake_model import fake_model_process, fake_stats, switch
from load_tests.processes import ServiceProcess, analytics_env, chat_env

pytestmark = pytest.mark.integration

RUN_DEADLINE = 1.5


@dataclass
class Stack:
    analytics: ServiceProcess
    model: ServiceProcess
    offline: ServiceProcess  # chat on the offline model
    online: ServiceProcess  # chat on the fake model, CHAT_RUN_DEADLINE=1.5

    def counted(self, user: str) -> int:
        response = httpx.get(f"{self.analytics.url}/analytics/{user}", timeout=5)
        return 0 if response.status_code == 404 else int(response.json()["message_count"])

    def drained(self, chat: ServiceProcess) -> None:
        wait_for(lambda: httpx.get(chat.url + "/health/dependencies", timeout=5).json()["outbox"]["depth"] == 0, "drained")


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    work: Path = tmp_path_factory.mktemp("stream")
    analytics = ServiceProcess(
        "analytics_service.main:app", log_path=work / "analytics.log", env=analytics_env(f"sqlite:///{work}/a.sqlite3")
    )
    model = fake_model_process("Fake LLM", log_path=work / "model.log")
    with analytics, model:
        online_env = chat_env(
            analytics.url,
            work / "online.sqlite3",
            model_url=model.url,
            CHAT_MODEL="fake",
            CHAT_LLM_POLICY__ATTEMPTS="1",
            CHAT_RUN_DEADLINE=str(RUN_DEADLINE),
        )
        offline = ServiceProcess(
            "chat_service.main:app", log_path=work / "offline.log", env=chat_env(analytics.url, work / "offline.sqlite3")
        )
        online = ServiceProcess("chat_service.main:app", log_path=work / "online.log", env=online_env)
        with offline, online:
            yield Stack(analytics, model, offline, online)


@pytest.fixture
def model(stack: Stack) -> Iterator[str]:
    httpx.post(stack.model.url + "/stats/reset", timeout=5)
    switch(stack.model.url, mode="ok", think=0)
    yield stack.model.url
    switch(stack.model.url, mode="ok", think=0)


def message(user: str, text: str = "hi") -> dict[str, object]:
    return {"user_id": user, "text": text, "metadata": {"timestamp": "2025-04-06T12:00:00Z", "session_id": f"s-{user}"}}


def stream(chat: ServiceProcess, body: dict[str, object], key: str | None = None) -> tuple[httpx.Response, list[ServerSentEvent]]:
    headers = {"Idempotency-Key": key} if key else {}
    with (
        httpx.Client(timeout=10) as client,
        connect_sse(client, "POST", chat.url + "/chat/stream", json=body, headers=headers) as source,
    ):
        if source.response.status_code != 200:
            source.response.read()
            return source.response, []
        return source.response, list(source.iter_sse())


def test_the_reply_streams_as_deltas_then_done_carries_what_post_chat_answers(stack):
    user = "stream-offline"
    response, events = stream(stack.offline, message(user, "hello, what time is it?"))
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    names = [event.event for event in events]
    assert names[-1] == "done" and set(names[:-1]) == {"delta"} and len(names) > 3  # a few words at a time
    deltas = [json.loads(event.data)["text"] for event in events[:-1]]
    done = json.loads(events[-1].data)
    assert "".join(deltas) == done["reply"]
    assert f"You have sent {messages_phrase(0)} so far" in done["reply"]
    assert "The current time is" in done["reply"]  # the tool ran inside the streamed run

    stack.drained(stack.offline)
    assert stack.counted(user) == 1  # recorded once, like a POST /chat/
    posted = httpx.post(stack.offline.url + "/chat/", json=message(user), timeout=10).json()
    stack.drained(stack.offline)
    response, events = stream(stack.offline, message(user))
    streamed = json.loads(events[-1].data)
    # The same JSON as POST /chat/, apart from the reply's timestamp and the counts (one more message now).
    assert messages_phrase(1) in posted["reply"]
    posted["reply"] = posted["reply"].replace(messages_phrase(1), messages_phrase(2))
    # ... and the streamed message is the conversation's third (the stream's own turn was stored).
    posted["reply"] = posted["reply"].replace("message 2 of this", "message 3 of this")
    assert posted["metadata"].pop("timestamp") and streamed["metadata"].pop("timestamp")
    assert streamed == posted
    assert set(posted) == {"user_id", "reply", "metadata"} and posted["metadata"] == {"session_id": f"s-{user}"}


def test_the_openai_compatible_path_streams_the_model_s_words(stack, model):
    _, events = stream(stack.online, message("stream-online"))
    deltas = [json.loads(event.data)["text"] for event in events if event.event == "delta"]
    done = json.loads(events[-1].data)
    assert events[-1].event == "done" and done["reply"].startswith("Fake LLM here.")
    assert "".join(deltas) == done["reply"] and len(deltas) >= 5  # the fake sends a word per chunk
    assert fake_stats(model)["requests"] == 1
    assert fake_stats(model)["answered"] == 1


@pytest.mark.parametrize(("mode", "status"), [("503", 503), ("cut", 502), ("empty", 502)])
def test_a_failure_before_the_first_delta_is_the_usual_json_error(stack, model, mode, status):
    switch(model, mode=mode, retry_after="7")
    response, _ = stream(stack.online, message("stream-early-failure"))
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert set(response.json()) == {"detail"}
    if status == 503:
        assert response.headers["retry-after"] == "7"


def test_bad_input_is_refused_before_any_stream(stack):
    blank = httpx.post(stack.offline.url + "/chat/stream", json={"user_id": "x", "text": "  "}, timeout=5)
    assert blank.status_code == 400 and blank.json() == {"detail": "Message text cannot be empty"}
    broken = httpx.post(stack.offline.url + "/chat/stream", content=b"{", headers={"content-type": "application/json"})
    assert broken.status_code == 422


def test_a_failure_after_the_stream_started_is_an_error_event_and_nothing_is_recorded(stack, model):
    user = "stream-cut"
    switch(model, mode="cut_mid")
    response, events = stream(stack.online, message(user))
    assert response.status_code == 200
    assert [event.event for event in events] == ["delta", "error"]
    assert json.loads(events[0].data) == {"text": "Fake"}
    assert json.loads(events[1].data) == {"status": 502, "detail": "The model stream broke off"}
    stack.drained(stack.online)
    assert stack.counted(user) == 0


def test_the_run_deadline_ends_a_stalled_stream_with_a_504_event(stack, model):
    switch(model, mode="stall_mid")
    started = time.monotonic()
    _, events = stream(stack.online, message("stream-deadline"))
    elapsed = time.monotonic() - started
    assert [event.event for event in events] == ["delta", "error"]
    assert json.loads(events[1].data) == {"status": 504, "detail": "The model did not answer in time"}
    assert RUN_DEADLINE - 0.1 < elapsed < RUN_DEADLINE + 1.0, elapsed
    wait_for(lambda: fake_stats(model)["streams_abandoned"] == 1, "the model's stream to be closed")


def test_the_run_deadline_before_the_first_delta_is_a_json_504(stack, model):
    switch(model, mode="hang")
    response, _ = stream(stack.online, message("stream-deadline-early"))
    assert response.status_code == 504
    assert response.json() == {"detail": "The model did not answer in time"}


def _open_stream(port: int, body: dict[str, object]) -> socket.socket:
    """A raw connection that sends the request and reads until the first delta: we close it when we like."""
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(
        b"POST /chat/stream HTTP/1.1\r\nHost: chat\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    received = b""
    while b"event: delta" not in received:
        chunk = sock.recv(4096)
        assert chunk, received
        received += chunk
    assert received.startswith(b"HTTP/1.1 200"), received
    return sock


def test_a_client_that_leaves_cancels_the_model_request_at_once_and_nothing_is_recorded(stack, model):
    user = "stream-gone"
    switch(model, mode="stall_mid")
    sock = _open_stream(stack.online.port, message(user))
    left = time.time()
    sock.close()
    wait_for(lambda: fake_stats(model)["streams_abandoned"] == 1, "the model's stream to be closed", timeout=5)
    closed = fake_stats(model)["abandoned_at"] - left

    # Tens of milliseconds here; 0.5 s leaves room for a busy machine and is still far from any lease or timeout.
    assert closed < 0.5, f"the model request was closed {closed * 1000:.0f} ms after the client left"
    time.sleep(0.2)
    stack.drained(stack.online)
    assert stack.counted(user) == 0
    metrics = httpx.get(stack.online.url + "/metrics", timeout=5).text
    assert "chat_llm_run_seconds_count" in metrics


def turns_of(chat: ServiceProcess, user: str) -> list[str]:
    response = httpx.get(f"{chat.url}/sessions/s-{user}", params={"user_id": user}, timeout=5)
    return [] if response.status_code == 404 else [turn["text"] for turn in response.json()["turns"]]


def test_a_streamed_conversation_remembers_and_a_retried_stream_replays(stack):
    user = "stream-memory"
    _, first = stream(stack.offline, message(user, "one"), key="memory-1")
    _, second = stream(stack.offline, message(user, "two"))
    assert "This is message 1 of this conversation." in json.loads(first[-1].data)["reply"]
    assert "This is message 2 of this conversation." in json.loads(second[-1].data)["reply"]
    _, replayed = stream(stack.offline, message(user, "one"), key="memory-1")
    done = json.loads(first[-1].data)
    assert [(e.event, json.loads(e.data)) for e in replayed] == [("delta", {"text": done["reply"]}), ("done", done)]
    stack.drained(stack.offline)
    assert stack.counted(user) == 2  # the replay ran no model and recorded nothing
    assert turns_of(stack.offline, user) == ["one", "two"]


def test_a_client_that_leaves_frees_its_conversation_at_once_and_stores_nothing(stack, model):
    user = "stream-gone-session"
    switch(model, mode="stall_mid")
    sock = _open_stream(stack.online.port, message(user, "lost"))
    sock.close()
    wait_for(lambda: fake_stats(model)["streams_abandoned"] == 1, "the model's stream to be closed", timeout=5)
    switch(model, mode="ok")
    started = time.monotonic()
    response, events = stream(stack.online, message(user, "next"))
    assert response.status_code == 200 and events[-1].event == "done"  # not a 409, nor a wait for the lock's lease
    assert time.monotonic() - started < 1.0
    assert turns_of(stack.online, user) == ["next"]
    stack.drained(stack.online)
    assert stack.counted(user) == 1
