"""A database outage is a 503 with Retry-After, answered fast, logged once; never a 500 or a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client import CollectorRegistry

from analytics_service.core.config import Settings
from analytics_service.core.metrics import AnalyticsMetrics
from analytics_service.main import create_app
from analytics_service.storage import open_store
from analytics_service.storage.guard import GuardedStore
from load_tests.faultproxy import Fault, FaultProxy
from tests.conftest import asgi_client, postgres_schema

TS = "2025-04-06T12:00:00Z"
RECORD = {"message_id": "m-1", "timestamp": TS}
BATCH = {"items": [{"user_id": "dora", "message_id": "m-2", "timestamp": TS}]}


@contextlib.asynccontextmanager
async def analytics_behind_proxy() -> AsyncIterator[tuple[httpx.AsyncClient, FaultProxy]]:
    """Analytics on a fresh PostgreSQL schema, reached through a fault proxy."""
    async with postgres_schema() as url:
        proxy = await FaultProxy(("127.0.0.1", 5432)).start()
        settings = Settings(
            database_url=url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}"),
            database_timeout=0.3,
            database_statement_timeout=0.5,
            database_retry_after=0.3,
            log_format="json",
        )
        try:
            async for client in asgi_client(create_app(settings), "http://analytics"):
                yield client, proxy
        finally:
            await proxy.stop()


async def until_ok(client: httpx.AsyncClient, path: str, timeout: float = 10.0) -> None:
    limit = time.monotonic() + timeout
    while (await client.get(path)).status_code != 200:
        assert time.monotonic() < limit, "analytics did not recover"
        await asyncio.sleep(0.05)


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json() == {"detail": "Database unavailable"}
    assert int(response.headers["retry-after"]) >= 1


@pytest.mark.postgres
@pytest.mark.parametrize("fault", ["close", "blackhole"])
async def test_a_postgres_outage_is_a_fast_503_logged_once_and_recovers(capsys, fault):
    async with analytics_behind_proxy() as (client, proxy):
        assert (await client.post("/analytics/dora/messages", json=RECORD)).status_code == 200
        capsys.readouterr()
        proxy.set(Fault(fault))
        timings = []
        for _ in range(20):
            for method, path, body in [("GET", "/analytics/dora", None), ("POST", "/analytics/dora/messages", RECORD)]:
                started = time.monotonic()
                response = await client.request(method, path, json=body)
                timings.append(time.monotonic() - started)
                assert_unavailable(response)
            assert_unavailable(await client.post("/messages/batch", json=BATCH))
        # At most the statement timeout while the outage is being noticed, then no wait at all.
        assert max(timings) < 0.5 + 1.0, timings
        connections = proxy.connections
        for _ in range(5):
            assert_unavailable(await client.get("/analytics/dora"))
        assert proxy.connections == connections, "once the outage is known, requests are refused without the database"
        assert sorted(timings)[len(timings) // 2] < 0.5, "and without waiting out the statement timeout"
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and int(ready.headers["retry-after"]) >= 1
        metrics = (await client.get("/metrics")).text
        assert "analytics_database_up 0.0" in metrics
        assert "analytics_database_outages_total 1.0" in metrics
        assert "analytics_database_refused_total" in metrics

        proxy.set(Fault("pass"))
        await until_ok(client, "/analytics/dora")
        assert (await client.post("/messages/batch", json=BATCH)).status_code == 200
        assert "analytics_database_up 1.0" in (await client.get("/metrics")).text
    log = capsys.readouterr().out
    assert log.count('"event": "database_unavailable"') == 1
    assert log.count('"event": "database_recovered"') == 1
    assert "Traceback" not in log and "unhandled_error" not in log
    assert len(log) < 100_000, "a line per request at most, never a traceback per request"


async def test_a_locked_sqlite_database_is_a_503_not_a_500(tmp_path):
    path = tmp_path / "analytics.sqlite3"
    settings = Settings(database_url=f"sqlite:///{path}", database_timeout=0.2, log_format="json")
    async for client in asgi_client(create_app(settings), "http://analytics"):
        assert (await client.post("/analytics/alice/messages", json=RECORD)).status_code == 200
        holder = sqlite3.connect(path, isolation_level=None)  # another process, holding the write lock
        try:
            holder.execute("BEGIN IMMEDIATE")
            started = time.monotonic()
            assert_unavailable(await client.post("/messages/batch", json=BATCH))
            assert time.monotonic() - started < 0.2 + 1.0
            assert (await client.get("/analytics/alice")).json() == {"message_count": 1}, "reads go on in WAL mode"
        finally:
            holder.close()
        assert (await client.post("/messages/batch", json=BATCH)).status_code == 200


async def test_bugs_still_propagate_and_leave_the_database_breaker_alone(tmp_path):
    store = GuardedStore(open_store(f"sqlite:///{tmp_path}/a.sqlite3"), metrics=AnalyticsMetrics(CollectorRegistry()))
    await store.start()
    try:
        store.store._reader.close()  # a programming error: using a closed connection
        with pytest.raises(sqlite3.ProgrammingError):
            await store.count("alice")
        assert store.breaker.state == "closed" and store.breaker.consecutive_failures == 0
    finally:
        await store.close()
