"""Outbox benchmark: appends and acknowledgements, before (SQLite on the event loop) and after.

    flock /work/.bench.lock uv run python -m load_tests.bench_outbox

Three ways to append, in alternating rounds at each concurrency (coroutines appending in a loop):
- `on-loop`: the outbox as it was (26adc80): one autocommit INSERT, run on the event loop;
- `thread`: the writer thread, one transaction per append (group commit off, `max_group=1`);
- `group`: the writer thread with group commit (what chat runs).
For each: appends a second, the latency each append saw (p50/p99), and the event loop's lag
(how late a 1 ms timer fires: what every other request on that loop waits). Then acknowledging
a 500-record batch: 500 autocommit DELETEs against one transaction. Files live in a temporary
folder on the real disk.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from chat_service.analytics_client import RecordItem
from chat_service.outbox import Outbox
from chat_service.outbox import _store as store
from servicekit.logging import configure_logging

from .loadgen import percentile

OLD_SCHEMA = """
PRAGMA busy_timeout = 2000; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL, message_id TEXT NOT NULL,
    timestamp TEXT NOT NULL, claimed_until REAL NOT NULL DEFAULT 0, claimed_by INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS outbox_claims ON outbox (claimed_until, id);
"""
OLD_APPEND = (
    "INSERT INTO outbox (user_id, message_id, timestamp) SELECT ?, ?, ? "
    "WHERE (SELECT coalesce(max(id) - min(id) + 1, 0) FROM outbox) < ?"
)
Append = Callable[[RecordItem], Awaitable[None]]


def record() -> RecordItem:
    return RecordItem("bench-user", uuid.uuid4().hex, "2025-04-06T12:00:00+00:00")


async def _loop_lag(stop: asyncio.Event, lags: list[float]) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append(time.perf_counter() - started - 0.001)


async def measure(append: Append, *, concurrency: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    lags: list[float] = []
    stop = asyncio.Event()
    deadline = time.perf_counter() + seconds

    async def writer() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await append(record())
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0)  # a sync append never yields: let the others (and the timer) in

    ticker = asyncio.create_task(_loop_lag(stop, lags))
    began = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    stop.set()
    await ticker
    return {
        "appends_per_s": round(len(latencies) / elapsed),
        "p50_us": round(percentile(latencies, 0.5) * 1e6),
        "p99_us": round(percentile(latencies, 0.99) * 1e6),
        "loop_lag_p99_us": round(percentile(lags, 0.99) * 1e6),
        "loop_lag_max_us": round(max(lags, default=0.0) * 1e6),
    }


async def run_round(kind: str, work: Path, *, concurrency: int, seconds: float) -> dict[str, float]:
    path = work / f"{kind}-{concurrency}-{uuid.uuid4().hex[:6]}.sqlite3"
    if kind == "on-loop":
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.executescript(OLD_SCHEMA)

        async def on_loop(item: RecordItem) -> None:
            db.execute(OLD_APPEND, (item.user_id, item.message_id, item.timestamp, 10**9))

        try:
            return await measure(on_loop, concurrency=concurrency, seconds=seconds)
        finally:
            db.close()
    box = Outbox(path, max_rows=10**9, max_group=1 if kind == "thread" else 1000)
    await box.open()
    try:
        groups = box.writer.groups
        result = await measure(box.append, concurrency=concurrency, seconds=seconds)
        result["appends_per_commit"] = round(result["appends_per_s"] * seconds / max(1, box.writer.groups - groups), 1)
        return result
    finally:
        await box.close()


def ack_batch(work: Path, *, one_transaction: bool, rounds: int) -> list[float]:
    db = store.connect(work / f"ack-{one_transaction}.sqlite3", busy_timeout=2.0)
    timings = []
    for _ in range(rounds):
        store.insert(db, 0, [record() for _ in range(500)], 10**9)
        ids = [row for row, _ in store.oldest(db, [0], 500)]
        started = time.perf_counter()
        if one_transaction:
            store.delete(db, ids)
        else:
            for row_id in ids:
                db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
        timings.append(time.perf_counter() - started)
    db.close()
    return timings


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-outbox-", dir=args.dir) as folder:
        work = Path(folder)
        kinds = ["on-loop", "thread", "group"]
        results: dict[tuple[str, int], list[dict[str, float]]] = {}
        for concurrency in args.concurrency:
            for _ in range(args.rounds):
                for kind in kinds:  # alternating: machine noise hits every kind alike
                    results.setdefault((kind, concurrency), []).append(
                        await run_round(kind, work, concurrency=concurrency, seconds=args.seconds)
                    )
        print(f"appends: {args.rounds} rounds of {args.seconds:g} s; each cell min-max over rounds")
        columns = ["appends_per_s", "p50_us", "p99_us", "loop_lag_p99_us", "loop_lag_max_us", "appends_per_commit"]
        print(f"{'kind':<8} {'conc':>4}  " + "  ".join(f"{c:>19}" for c in columns))
        for (kind, concurrency), rounds in results.items():
            cells = []
            for column in columns:
                values = [r[column] for r in rounds if column in r]
                cells.append(f"{min(values):g}-{max(values):g}" if values else "-")
            print(f"{kind:<8} {concurrency:>4}  " + "  ".join(f"{c:>19}" for c in cells))
        for one_transaction in (False, True):
            timings = ack_batch(work, one_transaction=one_transaction, rounds=args.ack_rounds)
            label = "one transaction" if one_transaction else "500 autocommits"
            print(
                f"ack 500 records, {label:>15}: median {percentile(timings, 0.5) * 1e3:.2f} ms,"
                f" p90 {percentile(timings, 0.9) * 1e3:.2f} ms over {len(timings)} batches"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--ack-rounds", type=int, default=30)
    parser.add_argument("--dir", help="where the files go (default: the system's temporary folder)")
    args = parser.parse_args()
    configure_logging(level="WARNING")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
