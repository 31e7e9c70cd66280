"""The outbox on a real SQLite file: bounded, durable, atomic, off the event loop, shared by processes."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from chat_service.analytics_client import RecordItem
from chat_service.outbox import Outbox, OutboxFull, OutboxUnavailable
from chat_service.outbox import _store as store
from chat_service.outbox._writer import Writer, WriterStalled


def item(n: int) -> RecordItem:
    return RecordItem("u", f"m{n}", "2025-04-06T12:00:00+00:00")


def ids(rows: list[tuple[int, RecordItem]]) -> list[str]:
    return [record.message_id for _, record in rows]


@pytest.fixture
def path(tmp_path) -> Path:
    return tmp_path / "o.sqlite3"


@pytest.fixture
async def outbox(path):
    box = Outbox(path, max_rows=3)
    await box.open()
    yield box
    await box.close()


def raw(path: Path) -> sqlite3.Connection:
    """A second connection, as another process would have."""
    return sqlite3.connect(path, isolation_level=None)


async def test_records_are_kept_across_reopening(path, outbox):
    await outbox.append(item(1))
    await outbox.close()
    again = Outbox(path, max_rows=3)
    await again.open()
    assert ids(await again.next_batch(10)) == ["m1"]
    await again.close()


async def test_a_full_outbox_refuses_until_records_are_delivered(outbox):
    for n in range(3):
        await outbox.append(item(n))
    with pytest.raises(OutboxFull):
        await outbox.append(item(9))
    assert (outbox.accepting, outbox.status) == (False, "at_bound")
    await outbox.acknowledge([row for row, _ in await outbox.next_batch(1)])
    assert outbox.accepting
    await outbox.append(item(9))
    assert (await outbox.stats()).depth == 3


def test_an_append_reads_the_id_span_by_search_not_by_scanning_every_waiting_record(path):
    # The bound check runs for every group of appends: a scan would make each append cost
    # O(waiting records) on the writer thread (~6 ms at 100,000) just when analytics is down.
    db = store.connect(path, busy_timeout=1)
    store.insert(db, 0, [item(n) for n in range(50)], max_rows=100)
    store.delete(db, [1, 2, 50])  # gaps at both ends: the span is what is left
    statements: list[str] = []
    db.set_trace_callback(statements.append)
    assert store.insert(db, 0, [item(99)], max_rows=48) == 1  # 47 records, ids 3..49: room for one
    db.set_trace_callback(None)
    reads = [statement for statement in statements if statement.startswith("SELECT")]
    assert len(reads) == 1  # with room to spare, the span alone decides (no count)
    plan = " / ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + reads[0]))
    assert "SCAN outbox" not in plan, (reads[0], plan)
    # At the bound, the span (3..51) overstates and the exact count refuses.
    assert store.insert(db, 0, [item(100)], max_rows=48) == 0
    db.close()


async def test_scrapes_count_at_most_once_per_max_age_and_operators_get_exact_counts(path):
    now = [100.0]
    box = Outbox(path, max_rows=10, clock=lambda: now[0])
    await box.open()
    try:
        await box.append(item(1))
        assert (await box.stats(max_age=1.0)).depth == 1
        await box.append(item(2))
        await box.dead_letter((await box.next_batch(1))[0][0], 422)
        cached = await box.stats(max_age=1.0)
        assert (cached.depth, cached.dead_letters, cached.status) == (1, 0, "ok"), "within max_age: the last count"
        exact = await box.stats()
        assert (exact.depth, exact.dead_letters) == (1, 1), "without max_age: counted now"
        await box.append(item(3))
        now[0] += 0.5
        assert (await box.stats(max_age=1.0)).depth == 1, "the exact call above counted again"
        now[0] += 0.5
        assert (await box.stats(max_age=1.0)).depth == 2, "max_age passed: counted again"
    finally:
        await box.close()


async def test_appends_that_arrive_together_share_one_commit(path):
    box = Outbox(path, max_rows=1000)
    await box.open()
    before = box.writer.groups
    await asyncio.gather(*(box.append(item(n)) for n in range(200)))
    commits = box.writer.groups - before
    assert (await box.stats()).depth == 200, "every append is committed"
    assert commits < 200 / 4, f"{commits} commits for 200 concurrent appends"
    # and a bound that falls inside a group admits exactly up to it
    box.max_rows = 250
    outcomes = await asyncio.gather(*(box.append(item(n)) for n in range(100)), return_exceptions=True)
    assert sum(o is None for o in outcomes) == 50 and all(isinstance(o, OutboxFull) for o in outcomes[50:])
    await box.close()


@pytest.mark.parametrize("size", [1, 3, 64, 100, 201])
def test_a_group_is_inserted_in_a_few_statements_in_order(path, size):
    db = store.connect(path, busy_timeout=1.0)
    items = [item(n) for n in range(size)]
    statements: list[str] = []
    db.set_trace_callback(statements.append)
    assert store.insert(db, 7, items, max_rows=1000) == size
    db.set_trace_callback(None)
    # one step per statement, not per row: under load every step costs the writer a GIL hand-back
    assert sum(s.startswith("INSERT") for s in statements) <= size.bit_length()
    rows = db.execute("SELECT owner, user_id, message_id, timestamp FROM outbox ORDER BY id").fetchall()
    assert rows == [(7, i.user_id, i.message_id, i.timestamp) for i in items], "every row, in the group's order"
    db.close()


async def test_a_batch_is_acknowledged_in_one_transaction(path):
    box = Outbox(path, max_rows=1000)
    await box.open()
    await asyncio.gather(*(box.append(item(n)) for n in range(500)))
    statements: list[str] = []
    await box.writer.call(lambda: box._db.set_trace_callback(statements.append))  # type: ignore[union-attr]
    await box.acknowledge([row for row, _ in await box.next_batch(500)])
    await box.writer.call(lambda: box._db.set_trace_callback(None))  # type: ignore[union-attr]
    writes = [s for s in statements if not s.startswith(("SELECT", "PRAGMA"))]
    assert writes.count("BEGIN IMMEDIATE") == 1 and writes.count("COMMIT") == 1
    # one statement, not one per record: each step gives the GIL away
    assert sum(s.startswith("DELETE") for s in writes) == 1
    assert (await box.stats()).depth == 0
    await box.close()


@pytest.mark.parametrize("operation", ["append", "acknowledge", "dead_letter"])
async def test_a_locked_database_never_blocks_the_event_loop(path, operation):
    box = Outbox(path, max_rows=100, busy_timeout=5.0)
    await box.open()
    await box.append(item(1))
    [(row_id, _)] = await box.next_batch(1)
    calls = {
        "append": lambda: box.append(item(2)),
        "acknowledge": lambda: box.acknowledge([row_id]),
        "dead_letter": lambda: box.dead_letter(row_id, 422),
    }
    other = raw(path)
    other.execute("BEGIN IMMEDIATE")  # another worker holds the write lock
    waiting = asyncio.ensure_future(calls[operation]())
    ticks = 0
    loop = asyncio.get_running_loop()
    started = loop.time()
    while loop.time() - started < 0.3:  # the loop keeps running its other work meanwhile
        await asyncio.sleep(0.01)
        ticks += 1
    assert not waiting.done(), "the write waits for the lock"
    assert ticks >= 10, f"the event loop ran only {ticks} times in 0.3 s"
    other.execute("ROLLBACK")
    await asyncio.wait_for(waiting, 5)
    other.close()
    await box.close()


def test_a_crash_between_the_two_dead_letter_statements_leaves_the_record_in_one_table(path):
    db = store.connect(path, busy_timeout=1.0)
    store.insert(db, 0, [item(1)], 10)
    [(row_id, _)] = store.oldest(db, [0], 1)
    db.close()
    # A process dies (os._exit: no cleanup at all) right after the INSERT, before the DELETE.
    crash = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from chat_service.outbox import _store as store
        db = store.connect(Path({str(path)!r}), busy_timeout=1.0)
        db.set_trace_callback(lambda sql: sql.startswith("DELETE") and os._exit(9))
        store.dead_letter(db, {row_id}, 422)
    """)
    assert subprocess.run([sys.executable, "-c", crash], timeout=60).returncode == 9
    db = store.connect(path, busy_timeout=1.0)
    assert [r for r, _ in store.oldest(db, [0], 10)] == [row_id] and store.dead_letter_count(db) == 0
    store.dead_letter(db, row_id, 422)  # and the next attempt simply succeeds
    assert store.count(db) == 0 and [d.id for d in store.dead_letters(db, 10)] == [row_id]
    db.close()


def test_a_record_an_older_version_left_in_both_tables_is_healed(path):
    db = store.connect(path, busy_timeout=1.0)
    store.insert(db, 0, [item(1)], 10)
    [(row_id, _)] = store.oldest(db, [0], 1)
    db.execute("INSERT INTO dead_letters SELECT id, user_id, message_id, timestamp, 422, 0 FROM outbox")
    store.dead_letter(db, row_id, 422)  # IntegrityError on every attempt, before
    assert store.count(db) == 0 and store.dead_letter_count(db) == 1
    db.close()


async def test_another_process_never_sees_records_it_does_not_own_and_adopts_a_dead_ones(path):
    first, second = Outbox(path, max_rows=10), Outbox(path, max_rows=10)
    await first.open()
    await second.open()
    assert (first.slots.own, second.slots.own) == (0, 1)
    await first.append(item(1))
    await second.append(item(2))
    assert ids(await first.next_batch(10)) == ["m1"]
    assert ids(await second.next_batch(10)) == ["m2"]
    await first.close()  # its lock is gone, as when a process dies
    await second.maintain()
    assert second.slots.adopted == [0]
    assert ids(await second.next_batch(10)) == ["m2", "m1"]
    await second.acknowledge([row for row, _ in await second.next_batch(10)])
    await second.maintain()
    assert second.slots.adopted == [], "a drained slot is let go"
    await second.close()


def holders(path: Path, *message_ids: str) -> list[subprocess.Popen[str]]:
    """Real processes that each append one record (in this order) and then live on, holding their slots."""
    script = textwrap.dedent(f"""
        import asyncio, sys
        from chat_service.analytics_client import RecordItem
        from chat_service.outbox import Outbox
        async def main():
            sys.stdin.readline()  # our turn
            box = Outbox({str(path)!r}, max_rows=10)
            await box.open()
            await box.append(RecordItem("u", sys.argv[1], "2025-04-06T12:00:00+00:00"))
            sys.stderr.write(f"slot {{box.slots.own}}\\n")
            await asyncio.sleep(60)
        asyncio.run(main())
    """)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, message_id],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for message_id in message_ids
    ]
    for slot, process in enumerate(processes):  # they import in parallel, then append in turn
        assert process.stdin is not None and process.stderr is not None
        process.stdin.write("go\n")
        process.stdin.close()
        assert process.stderr.readline() == f"slot {slot}\n"
    return processes


def test_a_killed_process_s_records_go_to_the_next_one_and_a_live_one_keeps_its_own(path):
    killed, alive = holders(path, "killed", "alive")
    try:
        killed.kill()  # SIGKILL: no cleanup; the kernel drops its flock
        killed.wait()

        async def next_process() -> list[str]:
            box = Outbox(path, max_rows=10)
            await box.open()
            try:
                return ids(await box.next_batch(10))
            finally:
                await box.close()

        assert asyncio.run(next_process()) == ["killed"]
    finally:
        for process in (killed, alive):
            process.kill()
            process.wait()
            assert process.stderr is not None
            process.stderr.close()


async def test_a_file_from_the_previous_version_is_migrated_and_delivered(path):
    old = raw(path)
    old.executescript("""
        PRAGMA journal_mode = WAL;
        CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL, message_id TEXT NOT NULL,
            timestamp TEXT NOT NULL, claimed_until REAL NOT NULL DEFAULT 0, claimed_by INTEGER NOT NULL DEFAULT 0);
        CREATE INDEX outbox_claims ON outbox (claimed_until, id);
        CREATE TABLE dead_letters (id INTEGER PRIMARY KEY, user_id TEXT NOT NULL, message_id TEXT NOT NULL,
            timestamp TEXT NOT NULL, status INTEGER, failed_at REAL NOT NULL);
        INSERT INTO outbox (user_id, message_id, timestamp, claimed_until, claimed_by) VALUES
            ('u', 'old1', '2025-04-06T12:00:00+00:00', 1e12, 1), ('u', 'old2', '2025-04-06T12:00:00+00:00', 0, 0);
    """)
    old.close()
    box = Outbox(path, max_rows=10)
    await box.open()
    await box.append(item(3))
    assert ids(await box.next_batch(10)) == ["old1", "old2", "m3"], "claimed or not, every old record goes out"
    await box.close()


async def test_a_bug_in_one_group_fails_its_appends_not_the_writer():
    calls = []

    def commit_group(items):
        calls.append(list(items))
        if len(calls) == 1:
            raise RuntimeError("bug")
        return [None] * len(items)

    writer: Writer[str] = Writer(commit_group)
    writer.start()
    with pytest.raises(RuntimeError):
        await writer.append("first")
    await writer.append("second")
    assert await writer.call(lambda: "still running") == "still running"
    await writer.stop()
    assert calls == [["first"], ["second"]]


async def test_an_append_the_stalled_writer_never_took_is_withdrawn_and_never_committed():
    committed: list[list[str]] = []
    writer: Writer[str] = Writer(lambda items: committed.append(list(items)) or [None] * len(items))
    writer.start()
    disk = threading.Event()  # a job that holds the thread, as a hung disk would
    stalled = asyncio.ensure_future(writer.call(disk.wait))
    try:
        while writer.busy_seconds() == 0:
            await asyncio.sleep(0.001)
        with pytest.raises(WriterStalled):
            await writer.append("behind the stall", withdraw_after=0.05)
        assert writer.busy_seconds() >= 0.05, "the stall shows while it lasts"
    finally:
        disk.set()
    await stalled
    await writer.append("after", withdraw_after=5.0)
    await writer.stop()
    assert committed == [["after"]], "the withdrawn append was never committed"
    assert writer.busy_seconds() == 0


async def test_an_append_the_writer_took_runs_to_its_end_however_long():
    commit = threading.Event()
    writer: Writer[str] = Writer(lambda items: commit.wait() and [None] * len(items))
    writer.start()
    append = asyncio.ensure_future(writer.append("slow disk", withdraw_after=0.3))
    deadline = time.monotonic() + 10
    while writer.busy_seconds() < 0.5:  # taken, and well past its withdraw_after
        assert time.monotonic() < deadline and not append.done(), "the writer never took the append"
        await asyncio.sleep(0.01)
    assert not append.done()
    commit.set()
    await append  # committed: no WriterStalled for an append already in the group
    await writer.stop()


async def test_a_stalled_writer_makes_the_outbox_refuse_until_it_is_free(path):
    box = Outbox(path, max_rows=100, append_timeout=0.5)
    await box.open()
    disk = threading.Event()
    stalled = asyncio.ensure_future(box.writer.call(disk.wait))
    try:
        deadline = time.monotonic() + 10
        while box.status != "stalled":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert not box.accepting and box.reason == "stalled"
        with pytest.raises(OutboxUnavailable) as refused:
            await box.append(item(1))
        assert refused.value.reason == "withdrawn"
    finally:
        disk.set()
    await stalled
    assert not box.accepting, "an append waited past the timeout: stalled until a probe takes the lock in time"
    await box.maintain()
    assert box.accepting
    await box.append(item(2))
    assert [row.message_id for _, row in await box.next_batch(10)] == ["m2"], "only the append made after the stall"
    await box.close()


async def test_seconds_the_loop_itself_did_not_run_do_not_count_against_the_writer():
    committed: list[list[str]] = []
    writer: Writer[str] = Writer(lambda items: committed.append(list(items)) or [None] * len(items))
    writer.start()
    disk = threading.Event()
    held = asyncio.ensure_future(writer.call(disk.wait))
    while writer.busy_seconds() == 0:
        await asyncio.sleep(0.001)
    append = asyncio.ensure_future(writer.append("paused", withdraw_after=0.5))
    await asyncio.sleep(0)  # queued, its withdrawal armed
    threading.Timer(1.25, disk.set).start()  # the writer is free right after the loop resumes
    time.sleep(1.2)  # noqa: ASYNC251 - the loop does not run, as in a paused process
    await append  # not withdrawn: the writer gets a fresh 0.5 s from when the loop runs again
    await held
    await writer.stop()
    assert committed == [["paused"]]


async def test_a_stall_ends_only_with_a_write_in_time_not_while_the_lock_is_still_held(path):
    box = Outbox(path, max_rows=100, busy_timeout=0.2, append_timeout=0.5)
    await box.open()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        disk = threading.Event()
        stalled = asyncio.ensure_future(box.writer.call(disk.wait))
        while box.writer.busy_seconds() == 0:
            await asyncio.sleep(0.001)
        with pytest.raises(OutboxUnavailable):
            await box.append(item(1))  # withdrawn: stalled from here
        disk.set()
        await stalled
        assert box.status == "stalled"
        await box.maintain()  # its probe cannot take the write lock
        assert box.status == "stalled", "not while the lock is held"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    await box.maintain()
    assert box.accepting, "the probe took the lock in time"
    await box.close()


@pytest.mark.parametrize("timeout", [0.0, -1.0])
async def test_a_withdrawal_needs_a_positive_timeout(path, timeout):
    with pytest.raises(ValueError):
        Outbox(path, max_rows=10, append_timeout=timeout)
    writer: Writer[str] = Writer(lambda items: [None] * len(items))
    writer.start()
    with pytest.raises(ValueError):
        await writer.append("x", withdraw_after=timeout)
    await writer.stop()
