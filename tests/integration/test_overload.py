"""Too much, against real processes: requests past the limit, clients that leave, slow and idle
connections, and running out of file descriptors."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from load_tests.processes import ServiceProcess, analytics_env, chat_env

pytestmark = pytest.mark.integration


def metric(url: str, name: str) -> float:
    """A sample's value from /metrics (0 when absent), e.g. 'chat_admission_shed_total{reason="queue_full"}'."""
    for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def raw_chat(port: int, user: str, text: str) -> socket.socket:
    """A POST /chat/ on its own socket, left open: the test decides when this client leaves."""
    body = json.dumps({"user_id": user, "text": text}).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /chat/ HTTP/1.1\r\nHost: chat\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    return sock


@dataclass
class Stack:
    analytics: ServiceProcess
    chat: ServiceProcess
    model: ServiceProcess | None = None

    def post(self, user: str, text: str = "hi", timeout: float = 20) -> httpx.Response:
        return httpx.post(self.chat.url + "/chat/", json={"user_id": user, "text": text}, timeout=timeout)

    def counted(self, user: str) -> int:
        response = httpx.get(f"{self.analytics.url}/analytics/{user}", timeout=5)
        return 0 if response.status_code == 404 else int(response.json()["message_count"])

    def drained(self) -> None:
        wait_for(
            lambda: httpx.get(self.chat.url + "/health/dependencies", timeout=5).json()["outbox"]["depth"] == 0,
            what="the outbox to drain",
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    """Chat with exactly two slots and one place in the queue, in front of a model that takes its time."""
    work: Path = tmp_path_factory.mktemp("overload")
    analytics = ServiceProcess(
        "analytics_service.main:app", log_path=work / "analytics.log", env=analytics_env(f"sqlite:///{work}/a.sqlite3")
    )
    model = ServiceProcess("tests.fakes.slow_model:app", log_path=work / "model.log")
    with analytics, model:
        env = chat_env(
            analytics.url,
            work / "outbox.sqlite3",
            model_url=model.url,
            CHAT_MODEL="slow",
            CHAT_LLM_TIMEOUT="30",
            CHAT_LLM_POLICY__ATTEMPTS="1",
            CHAT_ADMISSION__MIN_LIMIT="2",
            CHAT_ADMISSION__INITIAL_LIMIT="2",
            CHAT_ADMISSION__MAX_LIMIT="2",
            CHAT_ADMISSION__QUEUE_TIMEOUT="30",
            CHAT_ADMISSION__QUEUE_MAX="1",
        )
        with ServiceProcess("chat_service.main:app", log_path=work / "chat.log", env=env) as chat:
            yield Stack(analytics, chat, model)


def in_background(call: Callable[[], httpx.Response]) -> tuple[threading.Thread, list[httpx.Response]]:
    out: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: out.append(call()))
    thread.start()
    return thread, out


def test_past_the_limit_and_the_queue_chat_answers_503_at_once_and_health_is_never_shed(stack):
    url = stack.chat.url
    runs = [in_background(lambda u=u: stack.post(u, "sleep=2")) for u in ("full-a", "full-b")]
    wait_for(lambda: metric(url, "chat_admission_in_flight") == 2, what="two runs in flight")
    queued = in_background(lambda: stack.post("full-queued", "quick"))
    wait_for(lambda: metric(url, "chat_admission_queued") == 1, what="one request queued")

    started = time.monotonic()
    refused = stack.post("full-refused")
    elapsed = time.monotonic() - started
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json() == {"detail": "The service is overloaded; retry after the Retry-After seconds"}
    assert refused.headers["x-request-id"]
    assert elapsed < 1.0, elapsed  # nothing ran for it; generous for a noisy machine
    for path in ("/healthz", "/readyz", "/metrics", "/health/dependencies", "/"):
        assert httpx.get(url + path, timeout=5).status_code == 200, path

    for thread, _ in [*runs, queued]:
        thread.join(30)
    assert [out[0].status_code for _, out in [*runs, queued]] == [200, 200, 200]
    assert metric(url, 'chat_admission_shed_total{reason="queue_full"}') >= 1
    assert metric(url, 'http_requests_total{method="POST",route="/chat/",status="503"}') >= 1
    assert metric(url, "chat_admission_limit") == 2
    # Refused by the server's protocol at the door: counted above, and no access line (a flood of
    # refusals must not flood the log).
    access = [json.loads(line) for line in stack.chat.log_path.read_text().splitlines() if '"event": "request"' in line]
    assert access and not [line for line in access if line["status"] == 503]
    stack.drained()
    assert stack.counted("full-refused") == 0 and stack.counted("full-queued") == 1


def test_clients_that_leave_are_neither_run_to_the_end_nor_counted(stack):
    url = stack.chat.url
    cancelled_before = metric(url, "chat_admission_cancelled_total")
    gone_before = metric(url, 'chat_admission_shed_total{reason="client_gone"}')
    leaves_running = raw_chat(stack.chat.port, "gone-running", "sleep=5")
    stays = in_background(lambda: stack.post("stays", "sleep=1"))
    wait_for(lambda: metric(url, "chat_admission_in_flight") == 2, what="two runs in flight")
    leaves_queued = raw_chat(stack.chat.port, "gone-queued", "quick")
    wait_for(lambda: metric(url, "chat_admission_queued") == 1, what="one request queued")

    leaves_queued.close()
    wait_for(lambda: metric(url, 'chat_admission_shed_total{reason="client_gone"}') == gone_before + 1, what="the drop")
    leaves_running.close()
    wait_for(lambda: metric(url, "chat_admission_cancelled_total") == cancelled_before + 1, what="the cancellation")
    wait_for(lambda: metric(url, "chat_admission_in_flight") <= 1, what="the slot back")

    stays[0].join(30)
    assert stays[1][0].status_code == 200
    stack.drained()
    assert stack.counted("stays") == 1
    assert stack.counted("gone-running") == 0  # its run was cancelled before anything was recorded
    assert stack.counted("gone-queued") == 0  # it never ran
    calls = httpx.get(stack.model.url + "/calls", timeout=5).json()
    assert calls["started"] > calls["finished"]  # the cancelled run hung up on the model


def test_a_chat_left_waiting_in_the_kernel_by_a_stall_is_refused_and_not_counted(tmp_path):
    # After a stall what chat reads has waited seconds, and its client is about to give up: it is
    # refused at the door (CHAT_ADMISSION__MAX_READ_WAIT, default 1 s), not run to be cut off.
    # A fresh chat: its loop-lag timer starts with the first admitted chat, so this stall is
    # refused for the request's own wait, not for the loop's lateness (the other rule).
    analytics = ServiceProcess(
        "analytics_service.main:app", log_path=tmp_path / "analytics.log", env=analytics_env(f"sqlite:///{tmp_path}/a.sqlite3")
    )
    with analytics:
        env = chat_env(analytics.url, tmp_path / "outbox.sqlite3")
        with ServiceProcess("chat_service.main:app", log_path=tmp_path / "chat.log", env=env) as chat:
            stack = Stack(analytics, chat)
            os.kill(chat.pid, signal.SIGSTOP)
            try:
                stalled = raw_chat(chat.port, "stalled", "hi")
                time.sleep(1.3)
            finally:
                os.kill(chat.pid, signal.SIGCONT)
            with stalled:
                stalled.settimeout(10)
                answer = stalled.recv(4096)
            assert answer.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1" in answer.lower()
            assert metric(chat.url, 'chat_admission_shed_total{reason="read_late"}') == 1
            assert stack.post("after-stall").status_code == 200  # read at once: served
            stack.drained()
            assert stack.counted("stalled") == 0 and stack.counted("after-stall") == 1


def test_slow_and_silent_connections_are_closed_by_the_read_timeout(tmp_path):
    env = chat_env("http://127.0.0.1:9", tmp_path / "outbox.sqlite3", SERVICEKIT_REQUEST_READ_TIMEOUT="1")
    with ServiceProcess("chat_service.main:app", log_path=tmp_path / "chat.log", env=env) as chat:
        slow = []
        for _ in range(10):
            sock = socket.create_connection(("127.0.0.1", chat.port))
            sock.sendall(b"POST /chat/ HTTP/1.1\r\nHost: chat\r\n")
            slow.append(sock)
        silent = [socket.create_connection(("127.0.0.1", chat.port)) for _ in range(10)]
        started = time.monotonic()
        for sock in slow:  # a header line now and then, never the end of the headers
            sock.sendall(b"X-Slow: 1\r\n")
        assert httpx.get(chat.url + "/healthz", timeout=5).status_code == 200
        for sock in slow + silent:
            sock.settimeout(5)
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
            assert answer == b"" or answer.startswith(b"HTTP/1.1 408 "), answer
            assert (answer != b"") == (sock in slow)  # a request that began is told why it ends
            sock.close()
        assert time.monotonic() - started < 4.5
        assert metric(chat.url, 'chat_connections_closed_total{reason="read_timeout"}') == 20


def test_the_soft_descriptor_limit_is_raised_to_the_hard_one(tmp_path):
    env = chat_env("http://127.0.0.1:9", tmp_path / "outbox.sqlite3")
    with ServiceProcess("chat_service.main:app", log_path=tmp_path / "chat.log", env=env, open_files=(256, 1024)) as chat:
        limits = Path(f"/proc/{chat.pid}/limits").read_text()
        assert re.search(r"Max open files\s+1024\s+1024", limits), limits
        assert metric(chat.url, "process_max_fds") == 1024
        assert 0 < metric(chat.url, "process_open_fds") < 1024


def test_idle_connections_make_room_and_busy_ones_get_a_503_when_descriptors_run_low(tmp_path):
    env = chat_env("http://127.0.0.1:9", tmp_path / "outbox.sqlite3", SERVICEKIT_FD_RESERVE="100")
    with ServiceProcess("chat_service.main:app", log_path=tmp_path / "chat.log", env=env, open_files=(300, 300)) as chat:
        idle = [socket.create_connection(("127.0.0.1", chat.port)) for _ in range(260)]  # the cap is 200
        assert httpx.get(chat.url + "/healthz", timeout=5).status_code == 200
        assert metric(chat.url, 'chat_connections_closed_total{reason="idle_evicted"}') >= 60
        for sock in idle:
            sock.close()
        wait_for(lambda: metric(chat.url, "process_open_fds") < 100, what="the idle connections to close")

        busy = []
        for _ in range(200):  # headers sent, body still to come: each is a request in progress
            sock = socket.create_connection(("127.0.0.1", chat.port))
            sock.sendall(b"POST /chat/ HTTP/1.1\r\nHost: chat\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n")
            busy.append(sock)
        late = socket.create_connection(("127.0.0.1", chat.port))
        late.settimeout(5)
        answer = late.recv(4096)
        assert answer.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1" in answer.lower(), answer
        late.close()
        for sock in busy:
            sock.close()
        wait_for(lambda: metric(chat.url, 'chat_connections_closed_total{reason="refused"}') >= 1, what="the count")
        log = (tmp_path / "chat.log").read_text()
        assert "connections_idle_evicted" in log and "connections_refused" in log


def test_accept_failures_are_logged_and_counted_on_the_stdlib_loop(tmp_path):
    env = chat_env("http://127.0.0.1:9", tmp_path / "outbox.sqlite3", SERVICEKIT_FD_RESERVE="0")
    with ServiceProcess(
        "chat_service.main:app",
        log_path=tmp_path / "chat.log",
        env=env,
        open_files=(128, 128),
        extra_args=("--loop", "asyncio"),
    ) as chat:
        flood = []
        for _ in range(160):  # more than the process has descriptors for
            try:
                flood.append(socket.create_connection(("127.0.0.1", chat.port), timeout=1))
            except OSError:
                break
        time.sleep(0.2)
        for sock in flood:
            sock.close()
        wait_for(lambda: metric(chat.url, 'chat_accept_errors_total{errno="EMFILE"}') >= 1, what="the count")
        assert "accept_failed" in (tmp_path / "chat.log").read_text()
