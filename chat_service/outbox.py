"""A durable outbox: records wait on local disk until analytics acknowledges them.

Appends happen in the request path, before the reply is sent, so a 200 always means the record
is on disk. Several worker processes may share the file: a deliverer claims rows for a while
before sending them, and a crashed worker's claims simply expire.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from .analytics_client import RecordItem

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    claimed_until REAL NOT NULL DEFAULT 0,
    claimed_by INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_claims ON outbox (claimed_until, id);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    user_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    status INTEGER,
    failed_at REAL NOT NULL
);
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


class OutboxFull(Exception):
    """The outbox holds its maximum; the chat must not answer 200 for a record it cannot keep."""


class Outbox:
    """SQLite in WAL mode; each append is one short autocommit insert (tens of microseconds)."""

    def __init__(self, path: str, *, max_rows: int, claim_seconds: float = 30.0) -> None:
        self.path = Path(path)
        self.max_rows = max_rows
        self.claim_seconds = claim_seconds
        self._db: sqlite3.Connection | None = None

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "outbox not open"
        return self._db

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout = 2000")
        db.execute("PRAGMA journal_mode = WAL")
        # NORMAL: a commit survives the process being killed (SIGKILL); only an OS crash can
        # lose the last commits. FULL would fsync every chat.
        db.execute("PRAGMA synchronous = NORMAL")
        db.executescript(SCHEMA)
        self._db = db
        self.release_orphans()

    def release_orphans(self) -> int:
        """Free claims of processes that died mid-delivery, so their records go out now, not in 30 s.

        Our own pid counts as dead too: a restarted container's chat is pid 1 again.
        """
        owners = [row[0] for row in self.db.execute("SELECT DISTINCT claimed_by FROM outbox WHERE claimed_until > 0")]
        dead = [pid for pid in owners if pid == os.getpid() or not _alive(pid)]
        self.db.executemany("UPDATE outbox SET claimed_until = 0 WHERE claimed_by = ?", [(pid,) for pid in dead])
        return len(dead)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def depth(self) -> int:
        """Records not yet acknowledged by analytics (an upper bound; exact with one process)."""
        low, high = self.db.execute("SELECT min(id), max(id) FROM outbox").fetchone()
        return 0 if low is None else int(high - low + 1)

    def exact_depth(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def append(self, item: RecordItem) -> None:
        row = (item.user_id, item.message_id, item.timestamp)
        # One statement on the request path: insert unless the id span says the outbox may be full.
        inserted = self.db.execute(
            "INSERT INTO outbox (user_id, message_id, timestamp) SELECT ?, ?, ? "
            "WHERE (SELECT coalesce(max(id) - min(id) + 1, 0) FROM outbox) < ?",
            (*row, self.max_rows),
        ).rowcount
        if not inserted:
            if self.exact_depth() >= self.max_rows:  # the span overstates when rows left out of order
                raise OutboxFull
            self.db.execute("INSERT INTO outbox (user_id, message_id, timestamp) VALUES (?, ?, ?)", row)

    def claim(self, limit: int) -> list[tuple[int, RecordItem]]:
        """Take up to `limit` of the oldest unclaimed records for delivery."""
        now = time.time()
        rows = self.db.execute(
            "UPDATE outbox SET claimed_until = ?, claimed_by = ? WHERE id IN "
            "(SELECT id FROM outbox WHERE claimed_until < ? ORDER BY id LIMIT ?) "
            "RETURNING id, user_id, message_id, timestamp",
            (now + self.claim_seconds, os.getpid(), now, limit),
        ).fetchall()
        rows.sort()
        return [(row[0], RecordItem(row[1], row[2], row[3])) for row in rows]

    def acknowledge(self, ids: Sequence[int]) -> None:
        self.db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])

    def dead_letter(self, row_id: int, status: int | None) -> None:
        """Move a record analytics refuses as invalid out of the way, keeping it for a human."""
        with self.db:  # one transaction: the record is never in both tables, nor in neither
            self.db.execute(
                "INSERT INTO dead_letters (id, user_id, message_id, timestamp, status, failed_at) "
                "SELECT id, user_id, message_id, timestamp, ?, ? FROM outbox WHERE id = ?",
                (status, time.time(), row_id),
            )
            self.db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))

    def dead_letters(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM dead_letters").fetchone()[0])

    def release(self, ids: Sequence[int]) -> None:
        self.db.executemany("UPDATE outbox SET claimed_until = 0 WHERE id = ?", [(i,) for i in ids])
