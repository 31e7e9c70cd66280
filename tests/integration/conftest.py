from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from load_tests.processes import ServiceProcess, analytics_env, chat_env

pytestmark = pytest.mark.integration


@dataclass
class Stack:
    analytics: ServiceProcess
    chat: ServiceProcess
    workdir: Path

    def chat_post(self, user: str, text: str = "hi", **kw: object) -> httpx.Response:
        return httpx.post(self.chat.url + "/chat/", json={"user_id": user, "text": text}, timeout=10, **kw)

    def dependencies(self) -> dict:
        return httpx.get(self.chat.url + "/health/dependencies", timeout=5).json()

    def analytics_count(self, user: str, **kw: object) -> int:
        response = httpx.get(f"{self.analytics.url}/analytics/{user}", timeout=5, **kw)
        return 0 if response.status_code == 404 else response.json()["message_count"]

    def wait_drained(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while self.dependencies()["outbox"]["depth"]:
            assert time.monotonic() < deadline, "the outbox did not drain"
            time.sleep(0.05)

    def logs(self) -> str:
        return "".join(p.read_text() for p in self.workdir.glob("*.log"))


@pytest.fixture
def make_stack(tmp_path) -> Iterator[Callable[..., Stack]]:
    started: list[ServiceProcess] = []

    def make(analytics_extra: dict[str, str] | None = None, chat_extra: dict[str, str] | None = None) -> Stack:
        analytics = ServiceProcess(
            "analytics_service.main:app",
            log_path=tmp_path / "analytics.log",
            env=analytics_env(
                f"sqlite:///{tmp_path}/analytics.sqlite3", ANALYTICS_SEED_DEMO_DATA="true", **(analytics_extra or {})
            ),
        )
        chat = ServiceProcess(
            "chat_service.main:app",
            log_path=tmp_path / "chat.log",
            env=chat_env(analytics.url, tmp_path / "outbox.sqlite3", **(chat_extra or {})),
        )
        started.extend([chat, analytics])
        analytics.start()
        chat.start()
        return Stack(analytics, chat, tmp_path)

    yield make
    for process in started:
        process.stop()
