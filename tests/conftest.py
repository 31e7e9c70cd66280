"""Fixtures shared by the suites: in-process apps with their lifespans, and real databases."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager

from analytics_service.core.config import Settings as AnalyticsSettings
from analytics_service.main import create_app as create_analytics

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

# The services read these from the environment; a developer's own (say CHAT_AUTH_JWT_SECRET,
# exported for compose) must not change what the tests see, in process or in the processes
# they start (which inherit os.environ).
_SETTINGS_PREFIXES = ("CHAT_", "ANALYTICS_", "OPENAI_", "SERVICEKIT_", "OTEL_", "PROMETHEUS_MULTIPROC_DIR")


def pytest_configure(config: pytest.Config) -> None:
    # Before any test module is imported: some build apps (and so read settings) at import.
    for name in list(os.environ):
        if name.startswith(_SETTINGS_PREFIXES):
            del os.environ[name]


REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@contextlib.asynccontextmanager
async def postgres_schema() -> AsyncIterator[str]:
    """A fresh schema on the real PostgreSQL server (as a database URL), dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(POSTGRES_URL)
    await admin.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{POSTGRES_URL}?search_path={schema}"
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    async with postgres_schema() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/nested/dir/analytics.sqlite3"


async def asgi_client(app, base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(manager.app), base_url=base_url) as client,
    ):
        yield client


@pytest.fixture
async def analytics(sqlite_url) -> AsyncIterator[httpx.AsyncClient]:
    """The real analytics app on a real SQLite file, demo data loaded, driven in process."""
    app = create_analytics(AnalyticsSettings(database_url=sqlite_url, seed_demo_data=True, log_format="json"))
    async for client in asgi_client(app, "http://analytics"):
        yield client
