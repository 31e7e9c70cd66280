"""SQLite in WAL mode, driven from one thread so the event loop never blocks on disk."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from .base import RecordResult, StoreRecord

T = TypeVar("T")

# SQLite's primary result codes that mean "the database cannot serve now", not "this is a bug":
# BUSY and LOCKED (another writer held on past busy_timeout), NOMEM, READONLY (say, a disk
# remounted read-only), IOERR, FULL, CANTOPEN (the file or its folder is gone) and PROTOCOL.
_UNAVAILABLE_CODES = frozenset({5, 6, 7, 8, 10, 13, 14, 15})

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    user_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (user_id, message_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS user_counts (
    user_id TEXT PRIMARY KEY,
    message_count INTEGER NOT NULL
) WITHOUT ROWID;
"""


class SqliteStore:
    """Writes go through one connection owned by one worker thread: serialized, none is lost.

    Several processes may share the file: BEGIN IMMEDIATE takes the write lock up front and
    busy_timeout waits for it, so concurrent increments never interleave. Reads of a count are
    one primary-key lookup (about 10 us) on a second connection, run on the event loop itself:
    in WAL mode a reader never waits for a writer, and a thread hop would cost ten times more.
    """

    def __init__(self, path: str, *, timeout: float = 1.0) -> None:
        self.path = Path(path)
        self.timeout = timeout  # how long a write waits for another process's write lock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._db: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            assert self._db is not None, "store not started"
            return fn(self._db)

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def start(self) -> None:
        def open_db() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute(f"PRAGMA busy_timeout = {round(self.timeout * 1000)}")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            db.executescript(SCHEMA)

        await asyncio.get_running_loop().run_in_executor(self._executor, open_db)
        self._reader = sqlite3.connect(self.path, isolation_level=None)
        self._reader.execute("PRAGMA busy_timeout = 100")

    @staticmethod
    def is_unavailable(error: BaseException) -> bool:
        return isinstance(error, sqlite3.OperationalError) and (error.sqlite_errorcode & 0xFF) in _UNAVAILABLE_CODES

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._db is not None:
            await self._run(lambda db: db.close())
            self._db = None
        self._executor.shutdown(wait=True)

    async def ping(self) -> None:
        await self._run(lambda db: db.execute("SELECT 1").fetchone())

    async def count(self, user_id: str) -> int | None:
        assert self._reader is not None, "store not started"
        row = self._reader.execute("SELECT message_count FROM user_counts WHERE user_id = ?", (user_id,)).fetchone()
        return None if row is None else int(row[0])

    async def record(self, records: Sequence[StoreRecord]) -> list[RecordResult]:
        return await self._run(lambda db: _record_all(db, records))


def _record_all(db: sqlite3.Connection, records: Sequence[StoreRecord]) -> list[RecordResult]:
    results: list[RecordResult] = []
    db.execute("BEGIN IMMEDIATE")
    try:
        for record in records:
            inserted = db.execute(
                "INSERT OR IGNORE INTO messages (user_id, message_id, recorded_at) VALUES (?, ?, ?)", record
            ).rowcount
            if inserted:
                row = db.execute(
                    "INSERT INTO user_counts (user_id, message_count) VALUES (?, 1) "
                    "ON CONFLICT (user_id) DO UPDATE SET message_count = message_count + 1 "
                    "RETURNING message_count",
                    (record.user_id,),
                ).fetchone()
            else:
                row = db.execute("SELECT message_count FROM user_counts WHERE user_id = ?", (record.user_id,)).fetchone()
            results.append(RecordResult(int(row[0]), duplicate=not inserted))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return results
