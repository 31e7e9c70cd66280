"""Both services as real uvicorn processes, driven over HTTP like a user would."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections import Counter

import httpx
import pytest

from tests.fakes.identity import bearer, claims, hs256

pytestmark = pytest.mark.integration

TUTORIAL_REQUEST = {
    "user_id": "alice",
    "text": "Hello, how are you?",
    "metadata": {"timestamp": "2025-04-06T12:00:00Z", "session_id": "123e4567-e89b-12d3-a456-426614174000"},
    "tags": ["greeting"],
}


def test_the_tutorial_walkthrough(make_stack):
    stack = make_stack()
    assert httpx.get(stack.analytics.url + "/analytics/alice").json() == {"message_count": 5}
    assert httpx.get(stack.analytics.url + "/analytics/charlie").status_code == 404
    response = httpx.post(stack.chat.url + "/chat/", json=TUTORIAL_REQUEST, timeout=10)
    assert response.status_code == 200
    assert "5 messages" in response.json()["reply"]
    assert response.json()["metadata"]["session_id"] == TUTORIAL_REQUEST["metadata"]["session_id"]
    stack.wait_drained()
    timed = stack.chat_post("alice", "What time is it?").json()["reply"]
    assert "6 messages" in timed and re.search(r"\d\d:\d\d:\d\d UTC", timed)
    for expected in (7, 8, 9):
        stack.wait_drained()
        assert f"{expected} messages" in stack.chat_post("alice").json()["reply"]
    stack.wait_drained()
    assert stack.analytics_count("alice") == 10


@pytest.mark.parametrize("raw_path", ["/analytics/alice%2F..%2Fbob", "/analytics/..%2Fbob", "/analytics/%2E%2E"])
def test_no_user_id_reaches_another_user_or_route(make_stack, raw_path):
    stack = make_stack()
    with httpx.Client(base_url=stack.analytics.url) as client:
        response = client.send(client.build_request("GET", httpx.URL(stack.analytics.url + raw_path)))
    assert response.status_code in (404, 422)
    assert "message_count" not in response.text
    for user in ("alice/../bob", "..", "a?b", "a#b", "a%2Fb"):
        chat = httpx.post(stack.chat.url + "/chat/", json={"user_id": user, "text": "hi"})
        assert chat.status_code == 422


def test_chat_answers_while_analytics_is_killed_and_catches_up_after(make_stack):
    stack = make_stack(chat_extra={"CHAT_ANALYTICS_READ__BREAKER_RESET": "0.5", "CHAT_ANALYTICS_RECORD__BREAKER_RESET": "0.5"})
    stack.analytics.kill()
    replies = [stack.chat_post("bob") for _ in range(5)]
    assert [r.status_code for r in replies] == [200] * 5
    assert all("0 messages" in r.json()["reply"] for r in replies)
    assert stack.dependencies()["outbox"]["depth"] == 5
    stack.analytics.start()
    stack.wait_drained()
    assert stack.analytics_count("bob") == 3 + 5


def test_a_frozen_analytics_costs_the_deadline_then_the_breaker_opens(make_stack):
    # A handful of sequential chats is little traffic: judge the failure rate after 4 attempts.
    stack = make_stack(chat_extra={"CHAT_ANALYTICS_READ__BREAKER_RESET": "1.0", "CHAT_ANALYTICS_READ__BREAKER_MIN_CALLS": "4"})
    stack.chat_post("alice")
    stack.analytics.signal(signal.SIGSTOP)
    try:
        timings = []
        for _ in range(6):
            started = time.monotonic()
            response = stack.chat_post("alice")
            timings.append(time.monotonic() - started)
            assert response.status_code == 200 and "0 messages" in response.json()["reply"]
        assert max(timings) < 0.5 + 1.0, timings  # the read deadline plus a generous margin
        assert stack.dependencies()["analytics"]["read"]["breaker"] == "open"
        assert min(timings[-2:]) < 0.45, "an open breaker answers without waiting out the 0.5 s deadline"
    finally:
        stack.analytics.signal(signal.SIGCONT)
    deadline = time.monotonic() + 1.0 + 5  # the breaker's reset, then a probe must close it
    while stack.dependencies()["analytics"]["read"]["breaker"] != "closed":
        assert time.monotonic() < deadline
        stack.chat_post("alice")
        time.sleep(0.05)
    stack.wait_drained()
    assert "messages" in stack.chat_post("alice").json()["reply"]
    assert re.search(r"You have sent [1-9]\d* messages", stack.chat_post("alice").json()["reply"])


def test_sigterm_finishes_work_and_flushes_the_outbox(make_stack):
    stack = make_stack(chat_extra={"CHAT_ANALYTICS_RECORD__BREAKER_RESET": "0.2"})
    stack.analytics.kill()
    for _ in range(4):
        assert stack.chat_post("carol").status_code == 200
    stack.analytics.start()
    # Held in the outbox until delivery resumes; SIGTERM must deliver them before exiting.
    # uvicorn re-raises the SIGTERM it handled once it has shut down cleanly: -15 is a clean exit.
    assert stack.chat.stop() in (0, -signal.SIGTERM)
    assert stack.analytics_count("carol") == 4
    log = (stack.workdir / "chat.log").read_text()
    assert '"event": "outbox_flushed"' in log and '"left": 0' in log and '"event": "chat_stopped"' in log


def test_records_left_by_a_killed_chat_are_delivered_by_the_next_one(make_stack):
    stack = make_stack()
    stack.analytics.kill()
    for _ in range(3):
        assert stack.chat_post("dave").status_code == 200
    stack.chat.kill()
    stack.analytics.start()
    stack.chat.start()
    stack.wait_drained()
    assert stack.analytics_count("dave") == 3


def test_secrets_never_reach_logs_or_health(make_stack):
    token, key = "tok-VERY-secret-123", "sk-ALSO-secret-456"
    jwt_secret = "jwt-SECRET-0123456789abcdef0123456789abcdef"
    stack = make_stack(
        analytics_extra={"ANALYTICS_API_TOKEN": token},
        chat_extra={
            "CHAT_ANALYTICS_API_TOKEN": token,
            "OPENAI_API_KEY": key,
            "CHAT_LLM_PROVIDER": "offline",
            "CHAT_AUTH_JWT_SECRET": jwt_secret,
        },
    )
    user_token = hs256(claims("alice", iss=None, aud=None), secret=jwt_secret)
    expired = hs256(claims("alice", ttl=-3600, iss=None, aud=None), secret=jwt_secret)
    forged = hs256(claims("alice", iss=None, aud=None), secret=jwt_secret + "x")
    assert "5 messages" in stack.chat_post("alice", headers=bearer(user_token)).json()["reply"]
    refusals = [stack.chat_post("alice", headers=bearer(bad)) for bad in (expired, forged, "not.a.token")]
    assert [r.status_code for r in refusals] == [401, 401, 401]
    assert httpx.get(stack.analytics.url + "/analytics/alice").status_code == 401
    assert httpx.get(stack.analytics.url + "/analytics/alice", headers={"Authorization": f"Bearer {token}x"}).status_code == 401
    health = httpx.get(stack.chat.url + "/health/dependencies").text + httpx.get(stack.chat.url + "/readyz").text
    stack.wait_drained()
    assert stack.analytics_count("alice", headers={"Authorization": f"Bearer {token}"}) == 6
    stack.chat.stop()
    stack.analytics.stop()
    logs = stack.logs()
    assert "request" in logs and '"reason": "expired"' in logs
    answers = "".join(r.text + str(r.headers) for r in refusals)
    for secret in (token, key, jwt_secret, user_token, expired, forged):
        assert secret not in logs and secret not in health and secret not in answers
    for signature in (t.rsplit(".", 1)[1] for t in (user_token, expired, forged)):
        assert signature not in logs and signature not in answers


def test_one_chat_can_be_followed_through_both_logs(make_stack):
    stack = make_stack()
    stack.chat_post("erin", headers={"X-Request-ID": "trace-me-123"})
    stack.chat.stop()
    stack.analytics.stop()
    analytics_log = (stack.workdir / "analytics.log").read_text()
    chat_log = (stack.workdir / "chat.log").read_text()
    assert '"request_id": "trace-me-123"' in chat_log
    assert '"request_id": "trace-me-123"' in analytics_log


async def test_several_chat_workers_share_the_outbox_and_the_metrics_and_lose_nothing(tmp_path):
    from load_tests.processes import ServiceProcess, analytics_env, chat_env

    analytics = ServiceProcess(
        "analytics_service.main:app",
        log_path=tmp_path / "analytics.log",
        env=analytics_env(f"sqlite:///{tmp_path}/analytics.sqlite3"),
    )
    chat = ServiceProcess(
        "chat_service.main:app",
        log_path=tmp_path / "chat.log",
        workers=2,
        env=chat_env(analytics.url, tmp_path / "outbox.sqlite3"),
    )
    log = tmp_path / "chat.log"
    # No keep-alive: every request opens a fresh connection, and either worker may accept it.
    fresh = httpx.Limits(max_keepalive_connections=0)
    with analytics, chat:
        assert chat.metrics_dir is not None, "workers get a fresh PROMETHEUS_MULTIPROC_DIR"
        deadline = time.monotonic() + 30
        while len(workers := {line["pid"] for line in _log_lines(log) if line.get("event") == "chat_started"}) < 2:
            assert time.monotonic() < deadline, "the second worker never started"
            await asyncio.sleep(0.1)
        async with httpx.AsyncClient(base_url=chat.url, timeout=10, limits=fresh) as client:
            statuses: list[int] = []
            for _ in range(10):  # a few at a time until both workers have answered chats
                replies = await asyncio.gather(
                    *(client.post("/chat/", json={"user_id": "worker-user", "text": "hi"}) for _ in range(8))
                )
                statuses += [reply.status_code for reply in replies]
                if _pids_serving(log, "/chat/", len(statuses)) == workers:
                    break
            sent = len(statuses)
            assert statuses == [200] * sent
            # A 200 from /chat/ means that worker appended the record to the shared outbox first.
            by_worker = Counter(line["pid"] for line in _access_lines(log, "/chat/"))
            assert set(by_worker) == workers and sum(by_worker.values()) == sent, by_worker

            deadline = time.monotonic() + 15
            while httpx.get(f"{analytics.url}/analytics/worker-user").json().get("message_count") != sent:
                assert time.monotonic() < deadline, "records were lost or duplicated across workers"
                await asyncio.sleep(0.1)

            served = f'http_requests_total{{method="POST",route="/chat/",status="200"}} {float(sent)}'
            for scrapes in range(1, 61):  # until both workers have answered a scrape
                assert served in (await client.get("/metrics")).text, "the totals cover every worker"
                if _pids_serving(log, "/metrics", scrapes) == workers:
                    break
            assert {line["pid"] for line in _access_lines(log, "/metrics")} == workers
            limits = re.findall(r'^chat_admission_limit\{pid="(\d+)"\} (\S+)$', (await client.get("/metrics")).text, re.M)
            assert {int(pid) for pid, _ in limits} == workers and all(float(v) > 0 for _, v in limits), limits

            # A worker killed outright leaves its gauge files behind; the next scrape forgets
            # them, while its counters still count.
            dead = min(workers)
            os.kill(dead, signal.SIGKILL)
            deadline = time.monotonic() + 15
            while any(chat.metrics_dir.glob(f"gauge_live*_{dead}.db")):
                assert time.monotonic() < deadline, "the dead worker's gauges were never dropped"
                assert served in (await client.get("/metrics")).text
                await asyncio.sleep(0.05)
            assert any(chat.metrics_dir.glob(f"counter_{dead}.db"))


def _log_lines(path) -> list[dict]:
    lines = []
    for raw in path.read_text().splitlines():
        if raw.startswith("{"):
            lines.append(json.loads(raw))
    return lines


def _access_lines(path, route: str) -> list[dict]:
    return [line for line in _log_lines(path) if line.get("event") == "request" and line.get("path") == route]


def _pids_serving(path, route: str, expected: int, timeout: float = 5.0) -> set[int]:
    """The pids that answered `route`, once the access lines of all `expected` requests are written."""
    deadline = time.monotonic() + timeout
    while len(lines := _access_lines(path, route)) < expected:
        assert time.monotonic() < deadline, f"{len(lines)} of {expected} access lines for {route}"
        time.sleep(0.02)
    return {line["pid"] for line in lines}
