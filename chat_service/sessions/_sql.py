"""The PostgreSQL store: the SDK's `SQLAlchemySession` (asyncpg) for history, plus lease locks and idempotency records.

Locks are lease rows rather than PostgreSQL advisory locks: an advisory lock pins a pooled
connection for a whole model run, a lease row costs two short statements and frees itself when a
replica dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from agents.extensions.memory import SQLAlchemySession
from agents.memory import SessionSettings
from sqlalchemy import Column, Float, MetaData, String, Table, Text, column, delete, select, table, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from servicekit.logging import get_logger

from ._backend import ComposedTurns, IdempotencyRecord
from ._turns import dump_item, keep_from, starts_turn_json

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
# The SDK's own tables (its defaults), for the statements its API has no call for: trim and sweep.
_MESSAGES = table("agent_messages", column("id"), column("session_id"), column("message_data"))
_SESSIONS = table("agent_sessions", column("session_id"), column("updated_at"))


async def _trim(connection: AsyncConnection, key: str, keep: int) -> None:
    # The items are decoded here, with the same `starts_turn` as a read; in the caller's
    # transaction, under the conversation's lock, and a row appended meanwhile has a larger id.
    items = select(_MESSAGES.c.id, _MESSAGES.c.message_data).where(_MESSAGES.c.session_id == key).order_by(_MESSAGES.c.id)
    rows = (await connection.execute(items)).all()
    first = keep_from([starts_turn_json(row.message_data) for row in rows], keep)
    if first:
        mine = _MESSAGES.c.session_id == key
        cut = mine if first == len(rows) else mine & (_MESSAGES.c.id < rows[first].id)
        await connection.execute(delete(_MESSAGES).where(cut))


def async_url(url: str) -> str:
    """postgresql://... (or postgres://...) as a SQLAlchemy asyncpg URL."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url.removeprefix(prefix)
    return url


class SqlBackend(ComposedTurns):
    calls_suspend = True  # asyncpg (or aiosqlite's thread) answers over the loop

    def __init__(self, url: str, *, ttl: float, timeout: float) -> None:
        address = make_url(async_url(url))
        options = _engine_options(timeout)
        if "search_path" in address.query:  # postgresql://...?search_path=s: asyncpg takes it as a server setting
            options["connect_args"]["server_settings"] = {"search_path": address.query["search_path"]}
            address = address.difference_update_query(["search_path"])
        self._engine: AsyncEngine = create_async_engine(address, **options)
        self.name = self._engine.dialect.name
        self._settings = SessionSettings()  # no limit: a read takes every item, and trimming bounds them
        self._ttl = ttl
        self._sweeper: asyncio.Task[None] | None = None
        self._tables = False

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
        payload = [{"session_id": key, "message_data": dump_item(item)} for item in items or ()]
        mine = (_LOCKS.c.key == key) & (_LOCKS.c.token == token)
        async with self._engine.begin() as connection:
            if (await connection.execute(delete(_LOCKS).where(mine).returning(_LOCKS.c.key))).first() is None:
                return  # not ours (the lease ran out and another run took it), or this close already committed
            if payload:
                touched = insert(_SESSIONS).values(session_id=key)
                touched = touched.on_conflict_do_update(
                    index_elements=["session_id"], set_={"updated_at": text("CURRENT_TIMESTAMP")}
                )
                await connection.execute(touched)
                await connection.execute(_MESSAGES.insert(), payload)
            if trim_to is not None:
                await _trim(connection, key, trim_to)

    async def trim(self, key: str, keep: int) -> None:
        async with self._engine.begin() as connection:
            await _trim(connection, key, keep)

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

    async def try_lock(self, key: str, token: str, lease: float) -> bool:
        await self._ensure_tables()
        now = time.time()
        values = {"token": token, "expires_at": now + lease}
        statement = (
            insert(_LOCKS)
            .values(key=key, **values)
            # Or ours already: the retry of a take whose reply was lost is not locked out by itself.
            .on_conflict_do_update(
                index_elements=["key"], set_=values, where=(_LOCKS.c.expires_at < now) | (_LOCKS.c.token == token)
            )
            .returning(_LOCKS.c.token)
        )
        async with self._engine.begin() as connection:
            holder: str | None = (await connection.execute(statement)).scalar_one_or_none()
        return holder == token

    async def unlock(self, key: str, token: str) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(delete(_LOCKS).where(_LOCKS.c.key == key, _LOCKS.c.token == token))

    async def claim(self, key: str, record: IdempotencyRecord, lease: float) -> IdempotencyRecord | None:
        await self._ensure_tables()
        now = time.time()
        values = {"token": record.token, "fingerprint": record.fingerprint, "reply": None, "expires_at": now + lease}
        statement = (
            insert(_IDEMPOTENCY)
            .values(key=key, **values)
            .on_conflict_do_update(
                index_elements=["key"],
                set_=values,
                where=(_IDEMPOTENCY.c.expires_at < now) | (_IDEMPOTENCY.c.token == record.token),
            )
            .returning(_IDEMPOTENCY.c.token)
        )
        async with self._engine.begin() as connection:
            if (await connection.execute(statement)).scalar_one_or_none() == record.token:
                return None
            row = (
                await connection.execute(
                    select(_IDEMPOTENCY.c.token, _IDEMPOTENCY.c.fingerprint, _IDEMPOTENCY.c.reply).where(
                        _IDEMPOTENCY.c.key == key
                    )
                )
            ).one_or_none()
        if row is None:  # released between the two statements: free again
            return await self.claim(key, record, lease)
        return IdempotencyRecord(row.token, row.fingerprint, row.reply)

    async def finish(self, key: str, token: str, reply: str, ttl: float) -> None:
        statement = (
            update(_IDEMPOTENCY)
            .where(_IDEMPOTENCY.c.key == key, _IDEMPOTENCY.c.token == token)
            .values(reply=reply, expires_at=time.time() + ttl)
        )
        async with self._engine.begin() as connection:
            await connection.execute(statement)

    async def release(self, key: str, token: str) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(delete(_IDEMPOTENCY).where(_IDEMPOTENCY.c.key == key, _IDEMPOTENCY.c.token == token))


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
