"""The SQLite conversation store when its file is busy, a lease ran out, or many conversations expire (real files)."""

from __future__ import annotations

import asyncio
import sqlite3
import time

from chat_service.sessions._conversations import CLOSE_RETRIES, Conversations
from chat_service.sessions._guarded import Guarded
from chat_service.sessions._keys import conversation_key
from chat_service.sessions._sqlite import SqliteBackend

TURN = [{"role": "user", "content": "hi"}, {"role": "assistant", "type": "message", "content": "hello"}]


def conversations_on(backend: SqliteBackend, failures: list[tuple[str, str]], *, lease: float = 55.0) -> Conversations:
    guarded = Guarded(timeout=0.5, on_failure=lambda op, reason: failures.append((op, reason)), emit=lambda event: None)
    return Conversations(backend, guarded, max_items=100, lock_wait=3.0, lease=lease, idempotency_ttl=60)


async def test_a_turn_whose_close_meets_a_busy_file_is_stored_moments_later_and_frees_the_conversation(tmp_path):
    backend = SqliteBackend(f"sqlite:///{tmp_path}/s.sqlite3", max_items=100, ttl=3600, timeout=0.5)
    await backend.start()
    failures: list[tuple[str, str]] = []
    conversations = conversations_on(backend, failures)
    other = sqlite3.connect(tmp_path / "s.sqlite3", isolation_level=None)  # another worker's long write
    try:
        async with conversations.turn("alice", "s-1") as turn:
            other.execute("BEGIN IMMEDIATE")
            await turn.complete(list(TURN))
            assert failures == [("close", "OperationalError")]  # the reply went out; the close failed
            other.execute("ROLLBACK")
        started = time.monotonic()
        async with conversations.turn("alice", "s-1") as again:  # not a 409 for the rest of the lease
            assert [item.get("content") for item in again.history] == ["hi", "hello"]
        assert time.monotonic() - started < CLOSE_RETRIES[0] + 1.0
    finally:
        other.close()
        await conversations.drain()
        await backend.close()


async def test_a_close_after_another_run_took_the_expired_lease_writes_nothing(tmp_path):
    backend = SqliteBackend(f"sqlite:///{tmp_path}/s.sqlite3", max_items=100, ttl=3600, timeout=0.5)
    await backend.start()
    key = conversation_key("alice", "s-1")
    try:
        assert await backend.open_turn(key, "slow-run", 0.05) == []
        await asyncio.sleep(0.1)  # its lease runs out while it still runs
        assert await backend.open_turn(key, "next-run", 10.0) == []
        await backend.close_turn(key, "slow-run", list(TURN), None)  # too late: must not interleave
        assert await backend.session(key).get_items() == []
        await backend.close_turn(key, "next-run", list(TURN), None)
        assert len(await backend.session(key).get_items()) == 2
    finally:
        await backend.close()


async def test_the_sweep_forgets_every_idle_conversation_in_short_batches(tmp_path):
    backend = SqliteBackend(f"sqlite:///{tmp_path}/s.sqlite3", max_items=100, ttl=3600, timeout=0.5)
    await backend.start()
    try:
        idle = time.time() - 7200
        with sqlite3.connect(tmp_path / "s.sqlite3") as db:
            db.executemany(
                "INSERT INTO conversations (session_id, updated_at) VALUES (?, ?)", [(f"k{n}", idle) for n in range(1234)]
            )
            db.executemany(
                "INSERT INTO conversation_items (session_id, data, created_at) VALUES (?, '{}', ?)",
                [(f"k{n}", idle) for n in range(1234)],
            )
        await backend.session("fresh").add_items(list(TURN))
        await backend.sweep()
        with sqlite3.connect(tmp_path / "s.sqlite3") as db:
            assert db.execute("SELECT session_id FROM conversations").fetchall() == [("fresh",)]
            assert db.execute("SELECT count(*) FROM conversation_items").fetchone() == (2,)
    finally:
        await backend.close()
