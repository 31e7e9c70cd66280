"""PostgreSQL through an asyncpg pool, for several analytics replicas."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from .base import RecordResult, StoreRecord

# What a database outage looks like from asyncpg: the connection (08xxx), a server shutting down
# or in recovery (57xxx), out of connections, memory or disk (53xxx), a transaction the server
# rolled back that a later try would pass (40xxx), sockets, and our own timeouts.
_UNAVAILABLE = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.TransactionRollbackError,
    OSError,
    TimeoutError,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    user_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, message_id)
);
CREATE TABLE IF NOT EXISTS user_counts (
    user_id TEXT PRIMARY KEY,
    message_count BIGINT NOT NULL
);
"""
# Any constant works; it keeps replicas that start together from racing on CREATE TABLE.
_SCHEMA_LOCK = 0x0DACA

# One round trip per record: the insert is a no-op for a duplicate id, and the counter's
# row lock serializes concurrent increments of one user, so no update is ever lost.
RECORD = """
WITH inserted AS (
    INSERT INTO messages (user_id, message_id, recorded_at) VALUES ($1, $2, $3::text::timestamptz)
    ON CONFLICT DO NOTHING RETURNING user_id
), bumped AS (
    INSERT INTO user_counts (user_id, message_count) SELECT user_id, 1 FROM inserted
    ON CONFLICT (user_id) DO UPDATE SET message_count = user_counts.message_count + 1
    RETURNING message_count
)
SELECT message_count, false AS duplicate FROM bumped
UNION ALL
SELECT message_count, true FROM user_counts WHERE user_id = $1 AND NOT EXISTS (SELECT 1 FROM inserted)
"""

COUNT = "SELECT message_count FROM user_counts WHERE user_id = $1"


class PostgresStore:
    """Every wait is bounded: connecting, acquiring a pooled connection, and each statement.

    A dead or blackholed server then fails a request within `timeout` (acquire, connect) or
    `statement_timeout`, instead of holding it until the client gives up.
    """

    def __init__(self, url: str, *, pool_size: int, timeout: float = 1.0, statement_timeout: float = 2.0) -> None:
        self.url = url
        self.pool_size = pool_size
        self.timeout = timeout
        self.statement_timeout = statement_timeout
        self._pool: asyncpg.Pool | None = None

    @staticmethod
    def is_unavailable(error: BaseException) -> bool:
        return isinstance(error, _UNAVAILABLE)

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "store not started"
        return self._pool

    async def start(self) -> None:
        self._pool = await asyncpg.create_pool(
            self.url,
            # No connection floor: asyncpg restores a floor from a background task that, during an
            # outage, reconnects on its own schedule (and logs a traceback each time), while the
            # guard is refusing requests precisely so that nothing waits on the database. Without a
            # floor, an idle pool closes its last connection after 300 s (asyncpg's default
            # inactive lifetime); readiness probes keep one warm, else one connect is paid again.
            min_size=0,
            max_size=self.pool_size,
            timeout=self.timeout,  # to connect
            command_timeout=self.statement_timeout,
        )
        async with self.pool.acquire(timeout=self.timeout) as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
            await conn.execute(SCHEMA)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def ping(self) -> None:
        async with self.pool.acquire(timeout=self.timeout) as conn:
            await conn.fetchval("SELECT 1")

    async def count(self, user_id: str) -> int | None:
        # pool.fetchval() would wait for a connection without a limit: acquire with one.
        async with self.pool.acquire(timeout=self.timeout) as conn:
            value = await conn.fetchval(COUNT, user_id)
        return None if value is None else int(value)

    async def record(self, records: Sequence[StoreRecord]) -> list[RecordResult]:
        # Lock counters in one global order, so two batches naming the same users cannot deadlock.
        order = sorted(range(len(records)), key=lambda i: (records[i].user_id, records[i].message_id))
        results: list[RecordResult | None] = [None] * len(records)
        async with self.pool.acquire(timeout=self.timeout) as conn, conn.transaction():
            for index in order:
                record = records[index]
                row = await conn.fetchrow(RECORD, record.user_id, record.message_id, record.timestamp)
                if row is None:
                    # A duplicate of a record another transaction committed while we waited on
                    # its key: this statement's snapshot predates that commit, a new one sees it.
                    count = await conn.fetchval(COUNT, record.user_id)
                    results[index] = RecordResult(int(count), duplicate=True)
                else:
                    results[index] = RecordResult(int(row["message_count"]), bool(row["duplicate"]))
        return [result for result in results if result is not None]
