"""PostgreSQL's store against the real server: what its own statements must do as SQLAlchemy's did."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from chat_service.sessions._sql import SqlBackend

from ..conftest import POSTGRES_URL, postgres_schema

pytestmark = pytest.mark.postgres


@pytest.fixture
async def postgres() -> AsyncIterator[tuple[SqlBackend, str]]:
    """The PostgreSQL store, started in a fresh schema, and that schema's URL."""
    async with postgres_schema() as url:
        backend = SqlBackend(url, ttl=3600, timeout=5.0)
        await backend.start()
        try:
            yield backend, url
        finally:
            await backend.close()


async def _pooled_server_pids(backend: SqlBackend, count: int) -> list[int]:
    """Check out `count` connections at once (so the pool holds that many), and their server pids."""
    pids: list[int] = []
    release = asyncio.Event()

    async def hold() -> None:
        async with backend._driver() as connection:
            pids.append(connection.get_server_pid())
            if len(pids) == count:
                release.set()
            await release.wait()

    await asyncio.gather(*(hold() for _ in range(count)))
    return pids


async def test_after_the_server_lost_every_connection_one_call_fails_not_one_per_pooled_connection(postgres) -> None:
    # A restart or a failover ends every backend: the pool's idle connections are all dead. SQLAlchemy
    # retires the whole pool on the first disconnect it sees; our own statements must do the same.
    backend, _ = postgres
    pids = await _pooled_server_pids(backend, 5)
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        await admin.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", pids)
    finally:
        await admin.close()
    await asyncio.sleep(0.2)
    outcomes: list[str] = []
    for n in range(8):
        try:
            history = await backend.open_turn(f"k{n}", "run", 30.0)
        except Exception as error:  # what a chat would get: counted, not raised
            outcomes.append(type(error).__name__)
        else:
            outcomes.append("taken" if history == [] else repr(history))
    assert outcomes.count("taken") >= 7 and outcomes[1:] == ["taken"] * 7, outcomes


async def test_a_take_whose_read_fails_leaves_the_conversation_free(postgres) -> None:
    backend, url = postgres
    admin = await asyncpg.connect(url.split("?")[0], server_settings={"search_path": url.split("=")[1]})
    try:
        await admin.execute("ALTER TABLE agent_messages RENAME TO agent_messages_away")
        with pytest.raises(asyncpg.UndefinedTableError):
            await backend.open_turn("k", "run-1", 30.0)  # the lock taken, then the read fails
        assert await admin.fetchval("SELECT count(*) FROM chat_session_locks") == 0  # rolled back with it
        await admin.execute("ALTER TABLE agent_messages_away RENAME TO agent_messages")
    finally:
        await admin.close()
    assert await backend.open_turn("k", "run-2", 30.0) == []  # another run takes it at once


def test_a_driver_other_than_asyncpg_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="asyncpg"):
        SqlBackend("postgresql+psycopg://postgres@127.0.0.1:5432/test", ttl=3600, timeout=5.0)
