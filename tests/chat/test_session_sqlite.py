"""The SQLite conversation store when its file is busy, a lease ran out, or many conversations expire (real files)."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import subprocess
import sys
import time

from chat_service.sessions._backend import IdempotencyRecord
from chat_service.sessions._conversations import CLOSE_RETRIES, Conversations
from chat_service.sessions._guarded import Guarded
from chat_service.sessions._keys import conversation_key, holder_is_gone, holder_token
from chat_service.sessions._sqlite import SqliteBackend

TURN = [{"role": "user", "content": "hi"}, {"role": "assistant", "type": "message", "content": "hello"}]


def conversations_on(backend: SqliteBackend, failures: list[tuple[str, str]], *, lease: float = 55.0) -> Conversations:
    guarded = Guarded(timeout=0.5, on_failure=lambda op, reason: failures.append((op, reason)), emit=lambda event: None)
    return Conversations(backend, guarded, max_items=100, lock_wait=3.0, lease=lease, idempotency_ttl=60)


async def test_a_turn_whose_close_meets_a_busy_file_is_stored_moments_later_and_frees_the_conversation(tmp_path):
    backend = SqliteBackend(f"sqlite:///{tmp_path}/s.sqlite3", ttl=3600, timeout=0.5)
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
    backend = SqliteBackend(f"sqlite:///{tmp_path}/s.sqlite3", ttl=3600, timeout=0.5)
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


def _gone_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


async def test_a_lock_or_running_key_of_a_killed_process_on_this_host_is_free_at_once(tmp_path):
    backend = SqliteBackend(f"sqlite:///{tmp_path}/s.sqlite3", ttl=3600, timeout=0.5)
    await backend.start()
    key = conversation_key("alice", "s-1")
    dead = f"{socket.gethostname()}/{_gone_pid()}/run"
    elsewhere = f"other-host/{_gone_pid()}/run"
    try:
        assert holder_is_gone(dead) and not holder_is_gone(elsewhere) and not holder_is_gone(holder_token())
        assert await backend.open_turn(key, dead, 60.0) == []
        assert await backend.open_turn(key, holder_token(), 60.0) == []  # taken over, not a 60 s wait
        other = conversation_key("bob", "s-1")
        assert await backend.open_turn(other, elsewhere, 60.0) == []
        assert await backend.open_turn(other, holder_token(), 60.0) is None  # another host's: its lease decides

        running = IdempotencyRecord(dead, "body-1", None)
        assert await backend.claim("k1", running, 60.0) is None
        assert await backend.claim("k1", IdempotencyRecord(holder_token(), "body-2", None), 60.0) is None  # ours now
        await backend.finish("k1", dead, "never", 60.0)  # the dead holder's token no longer matches
        done = IdempotencyRecord(dead, "body-3", None)
        assert await backend.claim("k2", done, 60.0) is None
        await backend.finish("k2", dead, '{"reply": "kept"}', 60.0)
        replay = await backend.claim("k2", IdempotencyRecord(holder_token(), "body-3", None), 60.0)
        assert replay is not None and replay.reply == '{"reply": "kept"}'  # a finished reply outlives its holder
    finally:
        await backend.close()


async def test_the_sweep_forgets_every_idle_conversation_in_short_batches(tmp_path):
    backend = SqliteBackend(f"sqlite:///{tmp_path}/s.sqlite3", ttl=3600, timeout=0.5)
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
