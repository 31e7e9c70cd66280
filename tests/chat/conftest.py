from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from analytics_service.core.config import Settings as AnalyticsSettings
from analytics_service.main import create_app as create_analytics
from chat_service.core.config import Settings
from chat_service.main import create_app
from chat_service.sessions._backend import Backend
from chat_service.sessions._open import make_backend
from load_tests.fake_model import fake_model_process, fake_stats, switch
from load_tests.processes import ServiceProcess

from ..conftest import REDIS_URL, postgres_schema

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
        while (await chat.get("/health/dependencies")).json()["outbox"]["depth"] != 0:  # None: not counted
            await asyncio.sleep(0.01)


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), pytest.param("redis", marks=pytest.mark.redis)]
)
async def store_url(request, tmp_path) -> AsyncIterator[str]:
    """Each conversation store in turn: a SQLite file, a fresh PostgreSQL schema, the Redis server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/shared-sessions.sqlite3"
    elif request.param == "postgres":
        async with postgres_schema() as url:
            yield url
    else:
        yield REDIS_URL


@pytest.fixture
async def backend(store_url) -> AsyncIterator[Backend]:
    """Each conversation store in turn, started, without the chat around it."""
    store = make_backend(store_url, ttl=3600, timeout=2.0)
    await store.start()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def redis_backend() -> AsyncIterator[Backend]:
    """The Redis store alone (for what only Redis does), closed afterwards."""
    store = make_backend(REDIS_URL, ttl=3600, timeout=5.0)
    try:
        yield store
    finally:
        await store.close()


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


@dataclass
class FakeModel:
    """A fake OpenAI-compatible server (a real uvicorn process) that tests switch between behaviours."""

    process: ServiceProcess

    @property
    def base_url(self) -> str:
        return self.process.url + "/v1"

    def switch(self, **change: object) -> None:
        switch(self.process.url, **change)

    @property
    def requests(self) -> int:
        return int(fake_stats(self.process.url)["requests"])

    def seen(self) -> list[dict[str, Any]]:
        return httpx.get(self.process.url + "/requests", timeout=5).json()  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def fake_model_servers(tmp_path_factory) -> Iterator[tuple[FakeModel, FakeModel]]:
    logs = tmp_path_factory.mktemp("fake-models")
    processes = [fake_model_process(name, log_path=logs / f"{name}.log") for name in ("primary", "fallback")]
    try:
        for process in processes:
            process.start(wait=0)  # both import at once
        for process in processes:
            process.wait_ready()
        yield FakeModel(processes[0]), FakeModel(processes[1])
    finally:
        for process in processes:
            process.stop()


@pytest.fixture
def models(fake_model_servers) -> tuple[FakeModel, FakeModel]:
    """The primary and fallback fake models, both answering at once, their counters zeroed."""
    for fake in fake_model_servers:
        fake.switch(mode="ok", think=0.0, retry_after=None)
        httpx.post(fake.process.url + "/stats/reset", timeout=5).raise_for_status()
    return fake_model_servers


def model_settings(
    models: tuple[FakeModel, FakeModel], *, fallback: bool = True, offline: bool = False, **extra: object
) -> dict[str, object]:
    """Chat settings for a primary and (optionally) a fallback fake model, and the offline last resort."""
    primary, second = models
    chain: list[object] = []
    if fallback:
        chain.append({"base_url": second.base_url, "model": "fallback-model", "api_key": "sk-fallback-secret"})
    if offline:
        chain.append("offline")
    return {
        "llm_provider": "auto",
        "openai_api_key": "sk-test-secret",
        "openai_base_url": primary.base_url,
        "model": "primary-model",
        "llm_timeout": 1.0,
        "llm_fallbacks": chain,
        "llm_policy": {"backoff_initial": 0.01, "backoff_max": 0.05},
        **extra,
    }
