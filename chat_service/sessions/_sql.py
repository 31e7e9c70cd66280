"""The PostgreSQL store: the SDK's `SQLAlchemySession` tables (asyncpg) for history, plus lease locks and idempotency records.

Locks are lease rows rather than PostgreSQL advisory locks: an advisory lock pins a pooled
connection for a whole model run, a lease row costs a statement in each of the turn's two
transactions and frees itself when a replica dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import asyncpg
from agents.extensions.memory import SQLAlchemySession
from agents.memory import SessionSettings
from sqlalchemy import Column, Float, MetaData, String, Table, Text, column, delete, select, table, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from servicekit.logging import get_logger

from ._backend import IdempotencyRecord
from ._turns import dump_item, keep_from, load_items, starts_turn_json

log = get_logger("sessions")

_META = MetaData()
_LOCKS = Table(
    "chat_session_locks",
    _META,
    Column("key", String, primary_key=True),
    Column("token", String, nullable=False),
    Column("expires_at", Float, nullable=False),
)
_IDEMPOTENCY = Table(
    "chat_idempotency",
    _META,
    Column("key", String, primary_key=True),
    Column("token", String, nullable=False),
    Column("fingerprint", String, nullable=False),
    Column("reply", Text),
    Column("expires_at", Float, nullable=False, index=True),
)
# The SDK's own tables (its defaults), for the sweep; a turn's statements are below, in SQL.
_MESSAGES = table("agent_messages", column("id"), column("session_id"), column("message_data"))
_SESSIONS = table("agent_sessions", column("session_id"), column("updated_at"))


# The statements of every chat (a turn, an idempotency key), sent on the pooled connection's own
# asyncpg connection (`SqlBackend._driver`): the same tables and values as the SDK's
# `SQLAlchemySession` and our `Table`s above, without SQLAlchemy's statement building and greenlet
# switch per call. Measured here (bench_sessions, a turn that takes, reads, stores and trims): 5.2-6.0
# ms of this process's CPU per turn through SQLAlchemy Core, 2.2-2.4 ms with these. SQLAlchemy
# still creates the tables, sweeps, and reads `GET /sessions` through the SDK's session.

# Taken when free, expired, or already ours (a retried take whose reply was lost is not locked out).
_TAKE = (
    "INSERT INTO chat_session_locks (key, token, expires_at) VALUES ($1, $2, $3) "
    "ON CONFLICT (key) DO UPDATE SET token = excluded.token, expires_at = excluded.expires_at "
    "WHERE chat_session_locks.expires_at < $4 OR chat_session_locks.token = $2 RETURNING token"
)
_HISTORY = "SELECT message_data FROM agent_messages WHERE session_id = $1 ORDER BY created_at, id"  # the SDK's order
_GIVE_BACK = "DELETE FROM chat_session_locks WHERE key = $1 AND token = $2 RETURNING key"
_TOUCH = (
    "INSERT INTO agent_sessions (session_id) VALUES ($1) ON CONFLICT (session_id) DO UPDATE SET updated_at = CURRENT_TIMESTAMP"
)
# One statement for the whole turn, its items numbered (and so ordered) as given.
_APPEND = (
    "INSERT INTO agent_messages (session_id, message_data) "
    "SELECT $1, item FROM unnest($2::text[]) WITH ORDINALITY AS turn(item, n) ORDER BY n"
)
# An idempotency key's record: stored when free, expired, or already ours (a retried claim).
_CLAIM = (
    "INSERT INTO chat_idempotency (key, token, fingerprint, reply, expires_at) VALUES ($1, $2, $3, NULL, $4) "
    "ON CONFLICT (key) DO UPDATE SET token = excluded.token, fingerprint = excluded.fingerprint, reply = NULL, "
    "expires_at = excluded.expires_at WHERE chat_idempotency.expires_at < $5 OR chat_idempotency.token = $2 RETURNING token"
)
_RECORD = "SELECT token, fingerprint, reply FROM chat_idempotency WHERE key = $1"
_FINISH = "UPDATE chat_idempotency SET reply = $3, expires_at = $4 WHERE key = $1 AND token = $2"
_FORGET = "DELETE FROM chat_idempotency WHERE key = $1 AND token = $2"
_ITEMS = "SELECT id, message_data FROM agent_messages WHERE session_id = $1 ORDER BY id"
_CUT_BEFORE = "DELETE FROM agent_messages WHERE session_id = $1 AND id < $2"

# Errors that say the server or the connection to it is gone (08: connection exceptions; 57:
# operator intervention, such as the admin shutdown of a restart; `TimeoutError`, an `OSError`,
# is told apart in `SqlBackend._driver`).
_SERVER_LOST = (asyncpg.PostgresConnectionError, asyncpg.exceptions.OperatorInterventionError, OSError)


async def _trim(connection: asyncpg.Connection, key: str, keep: int) -> None:
    # The items are decoded here, with the same `starts_turn` as a read; in the caller's
    # transaction, under the conversation's lock, and a row appended meanwhile has a larger id.
    rows: Sequence[asyncpg.Record] = await connection.fetch(_ITEMS, key)
    first = keep_from([starts_turn_json(row["message_data"]) for row in rows], keep)
    if first:
        # Past the last row's id when every row goes.
        await connection.execute(_CUT_BEFORE, key, rows[first]["id"] if first < len(rows) else rows[-1]["id"] + 1)


def async_url(url: str) -> str:
    """postgresql://... (or postgres://...) as a SQLAlchemy asyncpg URL."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url.removeprefix(prefix)
    return url


class SqlBackend:
    calls_suspend = True  # asyncpg answers over the loop

    def __init__(self, url: str, *, ttl: float, timeout: float) -> None:
        address = make_url(async_url(url))
        options = _engine_options(timeout)
        if "search_path" in address.query:  # postgresql://...?search_path=s: asyncpg takes it as a server setting
            options["connect_args"]["server_settings"] = {"search_path": address.query["search_path"]}
            address = address.difference_update_query(["search_path"])
        if address.get_driver_name() != "asyncpg":  # a turn's statements are asyncpg's (`_driver`)
            raise ValueError(f"PostgreSQL sessions need the asyncpg driver, not {address.get_driver_name()!r}")
        self._engine: AsyncEngine = create_async_engine(address, **options)
        self.name = self._engine.dialect.name
        self._settings = SessionSettings()  # no limit: a read takes every item, and trimming bounds them
        self._ttl = ttl
        self._sweeper: asyncio.Task[None] | None = None
        self._tables = False
        self._server_lost_at = 0.0  # time.monotonic() when a connection last showed the server gone

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="session-sweep")
        await self._ensure_tables()

    async def _ensure_tables(self) -> None:
        # At start, or on the first call after a start the store was down for.
        if self._tables:
            return
        async with self._engine.begin() as connection:
            await connection.run_sync(_META.create_all)
        # The SDK creates its tables on a session's first call when asked to: once here, not per chat.
        await SQLAlchemySession("-", engine=self._engine, create_tables=True).get_items(limit=1)
        self._tables = True

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self._engine.dispose()

    def session(self, key: str) -> SQLAlchemySession:
        return _Session(key, engine=self._engine, session_settings=self._settings, backend=self)

    async def close_turn(self, key: str, token: str, items: list[Any] | None, trim_to: int | None) -> None:
        """One transaction: give the lock back, store the turn, trim; nothing unless `token` held the lock.

        Not the composed version (store, trim, unlock): a store whose reply was lost (a timeout
        after the commit) was retried by `Conversations.settle` and stored the turn twice, and a
        close by a run that no longer held the lock wrote into another run's conversation. Here a
        retry after a lost reply finds the lock gone and does nothing, as SQLite's does.
        """
        await self._ensure_tables()
        # Serialized here, not through an SDK session: building one costs ~0.8 ms (its table metadata).
        serialized = [dump_item(item) for item in items or ()]
        async with self._driver() as connection, connection.transaction():
            if await connection.fetchval(_GIVE_BACK, key, token) is None:
                return  # not ours (the lease ran out and another run took it), or this close already committed
            if serialized:
                await connection.execute(_TOUCH, key)
                await connection.execute(_APPEND, key, serialized)
            if trim_to is not None:
                await _trim(connection, key, trim_to)

    async def trim(self, key: str, keep: int) -> None:
        async with self._driver() as connection, connection.transaction():
            await _trim(connection, key, keep)

    @contextlib.asynccontextmanager
    async def _driver(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection's own asyncpg connection (the pool's limits and timeouts still hold).

        What SQLAlchemy does for its own statements, done here for these: a connection that raised
        anything (a timeout cut it mid-statement, the server went away) is closed and dropped from
        the pool, not handed to the next chat; and once one shows the server was lost (a restart, a
        failover), every connection pooled before that is replaced at its next checkout, so one
        chat's call fails rather than one per pooled connection.
        """
        async with self._engine.connect() as connection:
            raw = await connection.get_raw_connection()
            while raw.info.setdefault("opened_at", time.monotonic()) < self._server_lost_at:
                await connection.invalidate()  # pooled before the server was lost: gone with it
                raw = await connection.get_raw_connection()  # the next pooled one, or a new one
            driver = cast(asyncpg.Connection, raw.driver_connection)
            try:
                yield driver
            except BaseException as error:
                if not isinstance(error, asyncio.CancelledError | TimeoutError) and (
                    isinstance(error, _SERVER_LOST) or driver.is_closed()
                ):
                    self._server_lost_at = time.monotonic()
                await connection.invalidate()
                raise

    async def sweep(self) -> None:
        """Forget conversations idle longer than the TTL, and expired locks and idempotency records."""
        await self._ensure_tables()
        cutoff = text("CURRENT_TIMESTAMP - make_interval(secs => :ttl)")
        idle = select(_SESSIONS.c.session_id).where(_SESSIONS.c.updated_at < cutoff)
        now = time.time()
        async with self._engine.begin() as connection:
            params = {"ttl": self._ttl}
            await connection.execute(delete(_MESSAGES).where(_MESSAGES.c.session_id.in_(idle)), params)
            await connection.execute(delete(_SESSIONS).where(_SESSIONS.c.updated_at < cutoff), params)
            await connection.execute(delete(_LOCKS).where(_LOCKS.c.expires_at < now))
            await connection.execute(delete(_IDEMPOTENCY).where(_IDEMPOTENCY.c.expires_at < now))

    async def _sweep_forever(self) -> None:
        period = min(max(self._ttl / 4, 0.05), 60.0)
        while True:
            await asyncio.sleep(period)
            try:
                await self.sweep()
            except Exception as error:  # the store is down: the next sweep tries again
                log.warning("session_sweep_failed", error=type(error).__name__)

    async def open_turn(self, key: str, token: str, lease: float) -> list[Any] | None:
        """One transaction: take the lease lock, then read the history only if the lock is ours.

        Not the SDK session's read after a separate take: that was a second transaction and an SDK
        session object (~0.8 ms to build) per chat, and a read that failed left a lock to undo.
        Taken again with the token that holds it, it succeeds (a retried take whose reply was lost).
        """
        await self._ensure_tables()
        now = time.time()
        async with self._driver() as connection, connection.transaction():
            if await connection.fetchval(_TAKE, key, token, now + lease, now) != token:
                return None
            rows = await connection.fetch(_HISTORY, key)
        return load_items(row["message_data"] for row in rows)

    async def claim(self, key: str, record: IdempotencyRecord, lease: float) -> IdempotencyRecord | None:
        await self._ensure_tables()
        now = time.time()
        async with self._driver() as connection, connection.transaction():
            if await connection.fetchval(_CLAIM, key, record.token, record.fingerprint, now + lease, now) == record.token:
                return None
            row = await connection.fetchrow(_RECORD, key)
        if row is None:  # released between the two statements: free again
            return await self.claim(key, record, lease)
        return IdempotencyRecord(row["token"], row["fingerprint"], row["reply"])

    async def finish(self, key: str, token: str, reply: str, ttl: float) -> None:
        async with self._driver() as connection:
            await connection.execute(_FINISH, key, token, reply, time.time() + ttl)

    async def release(self, key: str, token: str) -> None:
        async with self._driver() as connection:
            await connection.execute(_FORGET, key, token)


def _engine_options(timeout: float) -> dict[str, Any]:
    # asyncpg: a connect that cannot finish and a statement that hangs both fail within the timeout.
    # The pool's own wait is bounded too: the SDK's writes finish even when cancelled, so a call
    # stuck waiting for a connection would outlive our timeout by SQLAlchemy's default 30 s.
    return {
        "connect_args": {"timeout": timeout, "command_timeout": timeout},
        "pool_pre_ping": False,
        "pool_timeout": timeout,
    }


class _Session(SQLAlchemySession):
    """The SDK's session, with the tables made first when the store was down at start."""

    def __init__(self, key: str, *, engine: AsyncEngine, session_settings: SessionSettings, backend: SqlBackend) -> None:
        super().__init__(key, engine=engine, session_settings=session_settings)
        self._backend = backend

    async def get_items(self, limit: int | None = None) -> list[Any]:
        await self._backend._ensure_tables()
        return await super().get_items(limit)
