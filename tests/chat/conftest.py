from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from asgi_lifespan import LifespanManager

from analytics_service.core.config import Settings as AnalyticsSettings
from analytics_service.main import create_app as create_analytics
from chat_service.core.config import Settings
from chat_service.main import create_app

MESSAGE = {
    "user_id": "alice",
    "text": "Hello, how are you?",
    "metadata": {"timestamp": "2025-04-06T12:00:00Z", "session_id": "123e4567-e89b-12d3-a456-426614174000"},
    "tags": ["greeting"],
}


def chat_settings(tmp_path, **overrides: object) -> Settings:
    base: dict[str, object] = {
        "analytics_url": "http://analytics",
        "outbox_path": str(tmp_path / "outbox.sqlite3"),
        "llm_provider": "offline",
        "log_format": "json",
        "outbox_linger": 0.0,
    }
    return Settings(**{**base, **overrides})


@contextlib.asynccontextmanager
async def running_chat(tmp_path, transport: httpx.AsyncBaseTransport, **overrides: object) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(chat_settings(tmp_path, **overrides), transport=transport)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(manager.app), base_url="http://chat") as client,
    ):
        yield client


@contextlib.asynccontextmanager
async def running_analytics(tmp_path) -> AsyncIterator[httpx.AsyncBaseTransport]:
    app = create_analytics(
        AnalyticsSettings(database_url=f"sqlite:///{tmp_path}/analytics.sqlite3", seed_demo_data=True, log_format="json")
    )
    async with LifespanManager(app) as manager:
        yield httpx.ASGITransport(manager.app)


async def drained(chat: httpx.AsyncClient, timeout: float = 5.0) -> None:
    """Wait until the outbox has delivered everything to analytics."""
    async with asyncio.timeout(timeout):
        while (await chat.get("/health/dependencies")).json()["outbox"]["depth"]:
            await asyncio.sleep(0.01)


@pytest.fixture
async def analytics_transport(tmp_path) -> AsyncIterator[httpx.AsyncBaseTransport]:
    async with running_analytics(tmp_path) as transport:
        yield transport


@pytest.fixture
async def chat(tmp_path, analytics_transport) -> AsyncIterator[httpx.AsyncClient]:
    """Chat in process, talking to the real analytics app (SQLite, demo data) in process."""
    async with running_chat(tmp_path, analytics_transport) as client:
        yield client


@pytest.fixture
def chat_with(tmp_path) -> Callable[..., contextlib.AbstractAsyncContextManager[httpx.AsyncClient]]:
    """Chat in front of any transport, with settings overridden."""
    return lambda transport, **overrides: running_chat(tmp_path, transport, **overrides)
