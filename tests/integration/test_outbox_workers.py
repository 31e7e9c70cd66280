"""Two chat workers share one outbox file; one is SIGKILLed holding records while analytics is down."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid

import httpx
import pytest

from chat_service.outbox import _store as store
from load_tests.faultproxy import ProxyProcess
from load_tests.processes import ServiceProcess, analytics_env, chat_env

pytestmark = pytest.mark.integration


def slot_pids(log: str) -> dict[int, int]:
    """Owner slot -> pid, from the outbox_opened lines of the chat log."""
    opened = [json.loads(line) for line in log.splitlines() if '"event": "outbox_opened"' in line]
    return {event["owner"]: event["pid"] for event in opened}


def test_a_killed_worker_s_records_are_delivered_once_nothing_lost(tmp_path):
    analytics = ServiceProcess(
        "analytics_service.main:app",
        log_path=tmp_path / "analytics.log",
        env=analytics_env(f"sqlite:///{tmp_path}/analytics.sqlite3"),
    )
    with analytics, ProxyProcess(("127.0.0.1", analytics.port)) as proxy:
        proxy.set("refuse")
        chat = ServiceProcess(
            "chat_service.main:app",
            log_path=tmp_path / "chat.log",
            workers=2,
            env=chat_env(proxy.url, tmp_path / "outbox.sqlite3"),
        )
        with chat:
            user = f"workers-{uuid.uuid4().hex[:8]}"
            deadline = time.monotonic() + 20
            db = store.connect(tmp_path / "outbox.sqlite3", busy_timeout=2.0)
            sent = 0
            while len(store.owners(db)) < 2:  # until both workers hold records
                assert time.monotonic() < deadline, "one worker took every chat"
                with httpx.Client(base_url=chat.url, timeout=10) as client:  # a new connection: either worker
                    assert client.post("/chat/", json={"user_id": user, "text": "hi"}).status_code == 200
                sent += 1
            owners = store.owners(db)
            db.close()
            pids = slot_pids((tmp_path / "chat.log").read_text())
            victim = pids[owners[0]]
            os.kill(victim, signal.SIGKILL)
            proxy.set("pass")
            deadline = time.monotonic() + 20
            while httpx.get(f"{analytics.url}/analytics/{user}", timeout=5).json().get("message_count") != sent:
                assert time.monotonic() < deadline, "records of the killed worker were lost"
                time.sleep(0.1)
            time.sleep(1.5)  # a late duplicate delivery would show up now (it must not count twice)
            assert httpx.get(f"{analytics.url}/analytics/{user}", timeout=5).json()["message_count"] == sent
