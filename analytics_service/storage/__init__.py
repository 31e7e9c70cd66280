"""Message counts in a real database: SQLite by default, PostgreSQL for replicas.

Both keep a row per (user_id, message_id), so a retried record counts once, and a counter
row per user, so reading a count is one primary-key lookup, never a COUNT over messages.
"""

from __future__ import annotations

from .base import RecordResult, Store, StoreRecord


def open_store(url: str, *, pool_size: int = 10, timeout: float = 1.0, statement_timeout: float = 2.0) -> Store:
    """Pick the backend by URL scheme (the connection itself opens in `Store.start`).

    `timeout` bounds connecting and waiting for a pooled connection (PostgreSQL) or for the
    write lock (SQLite); `statement_timeout` each PostgreSQL statement.
    """
    if url.startswith("sqlite:///"):
        from .sqlite import SqliteStore

        return SqliteStore(url.removeprefix("sqlite:///"), timeout=timeout)
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore

        return PostgresStore(url, pool_size=pool_size, timeout=timeout, statement_timeout=statement_timeout)
    raise ValueError("database URL must start with sqlite:/// or postgresql://")


__all__ = ["RecordResult", "Store", "StoreRecord", "open_store"]
