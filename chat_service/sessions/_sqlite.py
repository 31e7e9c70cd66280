"""The default store: one SQLite file, stdlib `sqlite3`, its short statements on the event loop.

Why not the SDK's sessions here: measured per turn on this machine, `SQLAlchemySession` on
aiosqlite costs ~4 ms (load 1.2 ms, add 2.7 ms) and the SDK's `SQLiteSession` opens connections
per session object; the goal is <= 1 ms per chat. This `Session` implements the SDK's protocol
with a handful of short statements on one connection.

Why on the loop and not on a thread: a turn is two transactions of ~40 us each, without an fsync
(WAL, synchronous=NORMAL, and no automatic checkpoint on this connection). A hop to a thread cost
more than the work: under load the thread waits for the GIL, and chat's throughput fell from
~690 to ~400 req/s. What can take long runs on a thread with its own connection: the WAL
checkpoint (every second) and the TTL sweep. A write that finds another worker's write in progress
waits at most `_BUSY_MS` on the loop, then fails as a store failure.

Locks are lease rows, because several workers on one host share the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from agents.items import TResponseInputItem
from agents.memory import SessionSettings
from agents.memory.session import SessionABC

from servicekit.logging import get_logger

from ._backend import IdempotencyRecord
from ._keys import holder_is_gone
from ._turns import SQLITE_STARTS_TURN, dump_item

T = TypeVar("T")
log = get_logger("sessions")
_BUSY_MS = 50
_CHECKPOINT_EVERY = 1.0
_SWEEP_BATCH = 500
_IDLE_BATCH = "SELECT session_id FROM conversations WHERE updated_at < ? LIMIT ?"

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS conversation_items ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT NOT NULL, data TEXT NOT NULL, created_at REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS conversation_items_session ON conversation_items (session_id, id)",
    "CREATE TABLE IF NOT EXISTS conversations (session_id TEXT PRIMARY KEY, updated_at REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS conversations_updated ON conversations (updated_at)",
    "CREATE TABLE IF NOT EXISTS conversation_locks (key TEXT PRIMARY KEY, token TEXT NOT NULL, expires_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS idempotency_keys (key TEXT PRIMARY KEY, token TEXT NOT NULL,"
    " fingerprint TEXT NOT NULL, reply TEXT, expires_at REAL NOT NULL)",
)


def sqlite_path(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///"))


class SqliteBackend:
    name = "sqlite"
    calls_suspend = False  # every call runs on the loop without awaiting anything

    def __init__(self, url: str, *, ttl: float, timeout: float) -> None:
        self.path = sqlite_path(url)
        self._settings = SessionSettings()  # no limit: a read takes every item, and trimming bounds them
        self._ttl = ttl
        self._busy_ms = min(int(timeout * 1000), _BUSY_MS)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sessions-maintenance")
        self._db: sqlite3.Connection | None = None  # the loop's
        self._maintenance: sqlite3.Connection | None = None  # the thread's
        self._sweeper: asyncio.Task[None] | None = None

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work` in one transaction, on the loop (see the module's docstring for why)."""
        if self._db is None:  # at start, or on the first call after a start the file could not open
            self._db = self._connect(self._busy_ms)
            self._db.execute("PRAGMA wal_autocheckpoint = 0")  # the maintenance thread checkpoints
        with self._db:  # autocommit connection: the BEGIN makes the call one transaction
            self._db.execute("BEGIN IMMEDIATE")
            return work(self._db)

    def _connect(self, busy_ms: int) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout = {busy_ms}")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")  # as the outbox: survives a process crash, spares an fsync
        for statement in SCHEMA:
            db.execute(statement)
        return db

    async def _in_thread(self, work: Callable[[sqlite3.Connection], T], *, transaction: bool = True) -> T:
        def call() -> T:
            if self._maintenance is None:
                self._maintenance = self._connect(5000)
            if not transaction:  # a checkpoint cannot run inside one
                return work(self._maintenance)
            with self._maintenance:
                self._maintenance.execute("BEGIN IMMEDIATE")
                return work(self._maintenance)

        return await asyncio.get_running_loop().run_in_executor(self._thread, call)

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="session-sweep")
        await self.run(lambda db: None)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._db is not None:
            self._db.close()
        if self._maintenance is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._maintenance.close)
        self._thread.shutdown(wait=True)

    def session(self, key: str) -> SqliteSession:
        return SqliteSession(key, self, self._settings)

    async def trim(self, key: str, keep: int) -> None:
        await self.run(lambda db: _trim(db, key, keep))

    async def sweep(self) -> None:
        """Forget conversations idle longer than the TTL, and expired locks and idempotency records."""
        now = time.time()

        def sweep_batch(db: sqlite3.Connection) -> int:
            idle = [row[0] for row in db.execute(_IDLE_BATCH, (now - self._ttl, _SWEEP_BATCH))]
            marks = ",".join("?" * len(idle))
            db.execute(f"DELETE FROM conversation_items WHERE session_id IN ({marks})", idle)
            db.execute(f"DELETE FROM conversations WHERE session_id IN ({marks})", idle)
            return len(idle)

        # Batches of a few hundred conversations, each its own short transaction: one big DELETE
        # would hold the file past the 50 ms the loop's writers wait, and fail their chats' stores.
        while await self._in_thread(sweep_batch) == _SWEEP_BATCH:
            pass
        await self._in_thread(lambda db: db.execute("DELETE FROM conversation_locks WHERE expires_at < ?", (now,)))
        await self._in_thread(lambda db: db.execute("DELETE FROM idempotency_keys WHERE expires_at < ?", (now,)))

    async def _sweep_forever(self) -> None:
        period = min(max(self._ttl / 4, 0.05), 60.0)
        last_sweep = time.monotonic()
        while True:
            await asyncio.sleep(min(period, _CHECKPOINT_EVERY))
            try:
                await self._in_thread(lambda db: db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone(), transaction=False)
                if time.monotonic() - last_sweep >= period:
                    last_sweep = time.monotonic()
                    await self.sweep()
            except Exception as error:  # the next round tries again
                log.warning("session_sweep_failed", error=type(error).__name__)

    async def open_turn(self, key: str, token: str, lease: float) -> list[Any] | None:
        now = time.time()

        def open_turn(db: sqlite3.Connection) -> list[Any] | None:
            row = db.execute(
                "INSERT INTO conversation_locks (key, token, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET token = excluded.token, expires_at = excluded.expires_at "
                "WHERE conversation_locks.expires_at < ? OR conversation_locks.token = excluded.token RETURNING token",
                (key, token, now + lease, now),
            ).fetchone()
            if row is None and not _took_over(db, "conversation_locks", key, token, now + lease):
                return None
            return _read(db, key, None)

        return await self.run(open_turn)

    async def close_turn(self, key: str, token: str, items: list[Any] | None, trim_to: int | None) -> None:
        now = time.time()

        def close_turn(db: sqlite3.Connection) -> None:
            held = db.execute("DELETE FROM conversation_locks WHERE key = ? AND token = ? RETURNING key", (key, token))
            if held.fetchone() is None:  # the lease ran out and another run took the conversation: never interleave
                return
            if items:
                _write(db, key, items, now)
            if trim_to is not None:
                _trim(db, key, trim_to)

        await self.run(close_turn)

    async def claim(self, key: str, record: IdempotencyRecord, lease: float) -> IdempotencyRecord | None:
        now = time.time()

        def claim(db: sqlite3.Connection) -> IdempotencyRecord | None:
            row = db.execute(
                "INSERT INTO idempotency_keys (key, token, fingerprint, reply, expires_at) VALUES (?, ?, ?, NULL, ?) "
                "ON CONFLICT (key) DO UPDATE SET token = excluded.token, fingerprint = excluded.fingerprint, reply = NULL, "
                "expires_at = excluded.expires_at "
                "WHERE idempotency_keys.expires_at < ? OR idempotency_keys.token = excluded.token RETURNING token",
                (key, record.token, record.fingerprint, now + lease, now),
            ).fetchone()
            if row is not None:
                return None
            if _took_over(db, "idempotency_keys", key, record.token, now + lease, running_only=True):
                db.execute("UPDATE idempotency_keys SET fingerprint = ? WHERE key = ?", (record.fingerprint, key))
                return None
            token, fingerprint, reply = db.execute(
                "SELECT token, fingerprint, reply FROM idempotency_keys WHERE key = ?", (key,)
            ).fetchone()
            return IdempotencyRecord(token, fingerprint, reply)

        return await self.run(claim)

    async def finish(self, key: str, token: str, reply: str, ttl: float) -> None:
        statement = "UPDATE idempotency_keys SET reply = ?, expires_at = ? WHERE key = ? AND token = ?"
        await self.run(lambda db: db.execute(statement, (reply, time.time() + ttl, key, token)))

    async def release(self, key: str, token: str) -> None:
        await self.run(lambda db: db.execute("DELETE FROM idempotency_keys WHERE key = ? AND token = ?", (key, token)))


class SqliteSession(SessionABC):
    """The Agents SDK `Session` protocol on the store's connection."""

    def __init__(self, session_id: str, backend: SqliteBackend, settings: SessionSettings) -> None:
        self.session_id = session_id
        self.session_settings = settings
        self._backend = backend

    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        count = limit if limit is not None else self.session_settings.limit if self.session_settings else None
        return await self._backend.run(lambda db: _read(db, self.session_id, count))

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        now = time.time()
        await self._backend.run(lambda db: _write(db, self.session_id, items, now))

    async def pop_item(self) -> TResponseInputItem | None:
        statement = (
            "DELETE FROM conversation_items WHERE id = "
            "(SELECT MAX(id) FROM conversation_items WHERE session_id = ?) RETURNING data"
        )
        row = await self._backend.run(lambda db: db.execute(statement, (self.session_id,)).fetchone())
        return None if row is None else json.loads(row[0])

    async def clear_session(self) -> None:
        def clear(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM conversation_items WHERE session_id = ?", (self.session_id,))
            db.execute("DELETE FROM conversations WHERE session_id = ?", (self.session_id,))

        await self._backend.run(clear)


def _read(db: sqlite3.Connection, key: str, limit: int | None) -> list[Any]:
    statement = "SELECT data FROM conversation_items WHERE session_id = ? ORDER BY id DESC LIMIT ?"
    rows = db.execute(statement, (key, -1 if limit is None else limit)).fetchall()
    return [json.loads(data) for (data,) in reversed(rows)]


def _write(db: sqlite3.Connection, key: str, items: list[Any], now: float) -> None:
    rows = [(key, dump_item(item), now) for item in items]
    db.executemany("INSERT INTO conversation_items (session_id, data, created_at) VALUES (?, ?, ?)", rows)
    db.execute(
        "INSERT INTO conversations (session_id, updated_at) VALUES (?, ?) "
        "ON CONFLICT (session_id) DO UPDATE SET updated_at = excluded.updated_at",
        (key, now),
    )


# `_turns.keep_from` in SQL: the first turn start among the newest `keep` items, else the latest turn
# start. Each query walks the (session_id, id) index from the cut and stops at its first match, so
# only the few rows around the cut are decoded: reading the role of every row (~100) cost ~70 us a
# close, ten times the DELETE. The window starts at id 0 when the conversation has fewer than `keep`.
_FIRST_START_IN_WINDOW = (
    "SELECT id FROM conversation_items WHERE session_id = ? AND id >= coalesce("
    "(SELECT id FROM conversation_items WHERE session_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?), 0)"
    f" AND {SQLITE_STARTS_TURN} ORDER BY id LIMIT 1"
)
_LATEST_START = f"SELECT id FROM conversation_items WHERE session_id = ? AND {SQLITE_STARTS_TURN} ORDER BY id DESC LIMIT 1"


def _trim(db: sqlite3.Connection, key: str, keep: int) -> None:
    row = db.execute(_FIRST_START_IN_WINDOW, (key, key, max(keep, 1) - 1)).fetchone()
    if row is None:
        row = db.execute(_LATEST_START, (key,)).fetchone()
    if row is None:  # no item starts a turn: none can be given to a model
        db.execute("DELETE FROM conversation_items WHERE session_id = ?", (key,))
    else:
        db.execute("DELETE FROM conversation_items WHERE session_id = ? AND id < ?", (key, row[0]))


def _took_over(
    db: sqlite3.Connection, table: str, key: str, token: str, expires_at: float, *, running_only: bool = False
) -> bool:
    """Take `key`'s row in `table` when its holder was a process on this host that is gone (SIGKILL, OOM):
    its conversation or key is free now, not when the lease runs out. A finished key's reply is kept."""
    finished = " AND reply IS NULL" if running_only else ""
    row = db.execute(f"SELECT token FROM {table} WHERE key = ?{finished}", (key,)).fetchone()
    if row is None or not holder_is_gone(row[0]):
        return False
    db.execute(f"UPDATE {table} SET token = ?, expires_at = ? WHERE key = ? AND token = ?", (token, expires_at, key, row[0]))
    return True
