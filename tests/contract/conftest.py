"""Both services as real processes, shared by the contract tests that need them (fuzzing, generated
clients, offline docs), and in-process apps for the rules."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from load_tests.processes import ServiceProcess, analytics_env, chat_env
from tests.chat.conftest import running_analytics, running_chat


@dataclass
class Live:
    analytics: ServiceProcess
    chat: ServiceProcess
    workdir: Path


@pytest.fixture(scope="session")
def live(tmp_path_factory) -> Iterator[Live]:
    """Analytics (SQLite, demo data) and chat (offline model) as uvicorn processes."""
    work = tmp_path_factory.mktemp("contract")
    analytics = ServiceProcess(
        "analytics_service.main:app",
        log_path=work / "analytics.log",
        env=analytics_env(f"sqlite:///{work}/analytics.sqlite3", ANALYTICS_SEED_DEMO_DATA="true"),
    )
    chat = ServiceProcess(
        "chat_service.main:app", log_path=work / "chat.log", env=chat_env(analytics.url, work / "outbox.sqlite3")
    )
    with analytics, chat:
        yield Live(analytics, chat, work)
    logs = (work / "chat.log").read_text() + (work / "analytics.log").read_text()
    assert "Traceback" not in logs, "a request made a service fail"


@pytest.fixture
async def chat(tmp_path) -> AsyncIterator[httpx.AsyncClient]:
    """Chat in process, talking to the real analytics app (SQLite, demo data) in process."""
    async with running_analytics(tmp_path) as transport, running_chat(tmp_path, transport) as client:
        yield client
