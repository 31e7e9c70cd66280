"""The outbox's SQL: schema, migration and every statement. Plain functions on one connection.

Nothing here knows about threads or the event loop: the outbox calls these on its writer thread,
the dead-letter command calls them directly.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..analytics_client import RecordItem

# Autocheckpoint at 100 pages (~400 KiB) instead of SQLite's 1,000 (~4 MiB, more than a small
# disk holds), and give the WAL file back above that size each time it restarts.
WAL_AUTOCHECKPOINT_PAGES = 100
WAL_SIZE_LIMIT = 100 * 4096

TABLES = (
    "CREATE TABLE IF NOT EXISTS outbox ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"  # never reused: a dead letter keeps its row's id
    " owner INTEGER NOT NULL DEFAULT 0,"  # the owner slot (a lock file) of the process that appended it
    " user_id TEXT NOT NULL, message_id TEXT NOT NULL, timestamp TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS outbox_owner ON outbox (owner, id)",
    "CREATE TABLE IF NOT EXISTS dead_letters ("
    " id INTEGER PRIMARY KEY, user_id TEXT NOT NULL, message_id TEXT NOT NULL, timestamp TEXT NOT NULL,"
    " status INTEGER, failed_at REAL NOT NULL)",
)

# The id span's two ends, one subquery each: SQLite reads a lone min() or max() off the primary
# key, but `SELECT min(id), max(id)` scans the whole table (~115 us at 2,000 waiting records,
# ~6 ms at 100,000, on the writer thread, for every group of appends).
SPAN = "SELECT (SELECT min(id) FROM outbox), (SELECT max(id) FROM outbox)"

Row = tuple[int, RecordItem]

# Rows per statement. Python's sqlite3 gives the GIL away for every step of a statement, and
# the writer thread must then get it back from the event loop's thread: with `executemany`, one
# hand-back per row. Against a spinning thread, a 500-row `executemany` DELETE took 250-600 ms in
# some runs (when the other thread woke and took the GIL during each step) and 0.3 ms in others;
# one 500-id statement never took more than 21 ms. So a group is a few multi-row statements.
# Sizes are powers of two, so that a handful of shapes stay in the statement cache.
MAX_ROWS_PER_STATEMENT = 64
MAX_IDS_PER_STATEMENT = 512


@functools.cache
def _insert_rows(n: int) -> str:
    return "INSERT INTO outbox (owner, user_id, message_id, timestamp) VALUES " + ", ".join(["(?, ?, ?, ?)"] * n)


@functools.cache
def _delete_ids(n: int) -> str:
    return "DELETE FROM outbox WHERE id IN (" + ", ".join(["?"] * n) + ")"


def _chunks(count: int, most: int) -> Iterator[tuple[int, int]]:
    """(start, size) pieces of `count`, each the largest power of two that fits, at most `most`."""
    start = 0
    while start < count:
        size = min(most, 1 << ((count - start).bit_length() - 1))
        yield start, size
        start += size


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    user_id: str
    message_id: str
    timestamp: str
    status: int | None
    failed_at: float


def connect(path: Path, *, busy_timeout: float, create: bool = True) -> sqlite3.Connection:
    """Open the file in WAL mode and bring its schema up to date; writes only when it must."""
    uri = f"{path.resolve().as_uri()}?mode={'rwc' if create else 'rw'}"
    db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    try:
        db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        # Incremental auto-vacuum lets the outbox give freed pages back to a full disk. It takes
        # effect only on a new file; older files are converted by `shrink` (a VACUUM).
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        db.execute("PRAGMA journal_mode = WAL")
        # NORMAL: a commit survives the process being killed (SIGKILL); only an OS crash can lose
        # the last commits. FULL would fsync every commit.
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
        db.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        _migrate(db)
    except BaseException:
        db.close()
        raise
    return db


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def _migrate(db: sqlite3.Connection) -> None:
    names = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    if {"outbox", "outbox_owner", "dead_letters"} <= names:
        return  # up to date: start-up writes nothing (a full disk must not stop it)
    with transaction(db):  # another worker may be migrating too: look again under the write lock
        if "owner" not in _columns(db, "outbox") and _columns(db, "outbox"):
            # A file from before owner slots: its rows go to whoever holds slot 0.
            db.execute("ALTER TABLE outbox ADD COLUMN owner INTEGER NOT NULL DEFAULT 0")
            db.execute("DROP INDEX IF EXISTS outbox_claims")
        for statement in TABLES:
            db.execute(statement)


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT: all or nothing, the write lock taken up front.

    (`with db:` does not begin anything on an autocommit connection.) A COMMIT that fails with
    SQLITE_FULL has already rolled back; any other failure rolls back here.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        raise


def insert(db: sqlite3.Connection, owner: int, items: Sequence[RecordItem], max_rows: int) -> int:
    """Append as many of `items` as the bound allows, in one transaction; returns how many."""
    with transaction(db):
        low, high = db.execute(SPAN).fetchone()
        room = max_rows - (0 if low is None else high - low + 1)  # the id span: an upper bound, O(log n)
        if room < len(items):
            room = max_rows - count(db)  # the span overstates when rows left out of order
        accepted = items[: max(room, 0)]
        for start, size in _chunks(len(accepted), MAX_ROWS_PER_STATEMENT):
            values = [
                value
                for item in accepted[start : start + size]
                for value in (owner, item.user_id, item.message_id, item.timestamp)
            ]
            db.execute(_insert_rows(size), values)
    return len(accepted)


def oldest(db: sqlite3.Connection, owners: Sequence[int], limit: int) -> list[Row]:
    """Up to `limit` of the oldest records of these owners, owner by owner."""
    rows: list[Row] = []
    for owner in owners:
        if len(rows) >= limit:
            break
        for row_id, user_id, message_id, timestamp in db.execute(
            "SELECT id, user_id, message_id, timestamp FROM outbox WHERE owner = ? ORDER BY id LIMIT ?",
            (owner, limit - len(rows)),
        ):
            rows.append((row_id, RecordItem(user_id, message_id, timestamp)))
    return rows


def delete(db: sqlite3.Connection, ids: Sequence[int]) -> None:
    """Delete acknowledged records, all in one transaction (one commit, not one per record)."""
    with transaction(db):
        for start in range(0, len(ids), MAX_IDS_PER_STATEMENT):
            chunk = list(ids[start : start + MAX_IDS_PER_STATEMENT])
            size = 1 << (len(chunk) - 1).bit_length()  # padded with its last id: one statement per chunk
            db.execute(_delete_ids(size), chunk + chunk[-1:] * (size - len(chunk)))


def dead_letter(db: sqlite3.Connection, row_id: int, status: int | None) -> None:
    """Move a record to `dead_letters`, atomically: it is never in both tables, nor in neither.

    OR IGNORE: a file that an older version left with the record in both tables heals here
    instead of failing with IntegrityError on every attempt.
    """
    with transaction(db):
        db.execute(
            "INSERT OR IGNORE INTO dead_letters (id, user_id, message_id, timestamp, status, failed_at) "
            "SELECT id, user_id, message_id, timestamp, ?, ? FROM outbox WHERE id = ?",
            (status, time.time(), row_id),
        )
        db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))


def dead_letters(db: sqlite3.Connection, limit: int) -> list[DeadLetter]:
    rows = db.execute(
        "SELECT id, user_id, message_id, timestamp, status, failed_at FROM dead_letters ORDER BY id LIMIT ?", (limit,)
    )
    return [DeadLetter(*row) for row in rows]


def requeue(db: sqlite3.Connection, owner: int, ids: Sequence[int] | None) -> int:
    """Move dead letters (all, or these ids) back into the outbox as new records of `owner`."""
    if ids is not None and not ids:
        return 0
    chosen = "" if ids is None else f"WHERE id IN ({','.join('?' * len(ids))})"
    parameters = tuple(ids or ())
    with transaction(db):
        moved = db.execute(
            f"INSERT INTO outbox (owner, user_id, message_id, timestamp) "
            f"SELECT ?, user_id, message_id, timestamp FROM dead_letters {chosen} ORDER BY id",
            (owner, *parameters),
        ).rowcount
        db.execute(f"DELETE FROM dead_letters {chosen}", parameters)
    return int(moved)


def owners(db: sqlite3.Connection) -> list[int]:
    """Owners that have records: a skip-scan of the owner index, O(owners x log n)."""
    return [
        int(owner)
        for (owner,) in db.execute(
            "WITH RECURSIVE o(owner) AS (SELECT min(owner) FROM outbox UNION ALL "
            "SELECT (SELECT min(owner) FROM outbox WHERE owner > o.owner) FROM o WHERE o.owner IS NOT NULL) "
            "SELECT owner FROM o WHERE owner IS NOT NULL"
        )
    ]


def count(db: sqlite3.Connection, owners: Sequence[int] | None = None) -> int:
    if owners is None:
        return int(db.execute("SELECT count(*) FROM outbox").fetchone()[0])
    return sum(int(db.execute("SELECT count(*) FROM outbox WHERE owner = ?", (o,)).fetchone()[0]) for o in owners)


def dead_letter_count(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT count(*) FROM dead_letters").fetchone()[0])


def checkpoint(db: sqlite3.Connection, *, busy_timeout: float) -> None:
    """Copy the WAL into the database and truncate the WAL file to zero bytes.

    Waits at most 0.1 s for other connections' readers, then restores the usual timeout.
    """
    db.execute("PRAGMA busy_timeout = 100")
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")


def shrink(db: sqlite3.Connection) -> None:
    """Give the file's free pages back to the filesystem.

    A file made before incremental auto-vacuum is converted by one VACUUM, which needs room for
    a copy of what the file holds: it is tried when the outbox is nearly empty, and again later.
    """
    if db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
        # executescript steps the pragma to the end; execute() would free a single page.
        db.executescript("PRAGMA incremental_vacuum;")
    elif count(db) < 1000:
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        db.execute("VACUUM")
