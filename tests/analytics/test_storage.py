"""Both storage backends against real databases: idempotency, O(1) reads, no lost updates."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from analytics_service.storage import StoreRecord, open_store
from tests.conftest import postgres_schema

TS = "2025-04-06T12:00:00+00:00"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request, sqlite_url):
    async with contextlib.AsyncExitStack() as stack:
        url = sqlite_url if request.param == "sqlite" else await stack.enter_async_context(postgres_schema())
        store = open_store(url, pool_size=20)
        await store.start()
        stack.push_async_callback(store.close)
        yield store


async def test_200_concurrent_records_for_one_user_give_200(store):
    await asyncio.gather(*(store.record([StoreRecord("hot", f"m{i}", TS)]) for i in range(200)))
    assert await store.count("hot") == 200


async def test_concurrent_retries_of_one_message_count_once(store):
    results = await asyncio.gather(*(store.record([StoreRecord("dup", "same", TS)]) for _ in range(50)))
    assert await store.count("dup") == 1
    assert sum(not r[0].duplicate for r in results) == 1


async def test_overlapping_batches_do_not_deadlock_or_lose_counts(store):
    users = [f"u{i}" for i in range(10)]
    batches = [[StoreRecord(u, f"b{b}", TS) for u in (users if b % 2 else list(reversed(users)))] for b in range(20)]
    await asyncio.gather(*(store.record(batch) for batch in batches))
    assert [await store.count(u) for u in users] == [20] * 10


async def test_unknown_user_and_ping(store):
    assert await store.count("nobody") is None
    await store.ping()


def test_unknown_database_schemes_are_refused():
    with pytest.raises(ValueError, match="sqlite"):
        open_store("mysql://x")


def test_sqlite_reads_are_a_primary_key_lookup(tmp_path):
    import sqlite3

    from analytics_service.storage.sqlite import SCHEMA

    db = sqlite3.connect(tmp_path / "plan.db")
    db.executescript(SCHEMA)
    plan = db.execute("EXPLAIN QUERY PLAN SELECT message_count FROM user_counts WHERE user_id = ?", ("x",)).fetchall()
    assert "USING PRIMARY KEY" in plan[0][3]
