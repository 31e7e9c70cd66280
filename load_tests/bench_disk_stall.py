"""A stalled outbox disk under load: chat refuses fast and says so, and counts only what it answered.

`uv run python -m load_tests.bench_disk_stall` starts analytics (SQLite) and chat (offline model,
as shipped) as real processes, drives chat closed-loop with `--connections` chats, and after
`--before` seconds has another process take the outbox file's write lock (`BEGIN IMMEDIATE`, as a
VACUUM or a long dead-letter requeue would) and hold it for `--stall` seconds. Chat's writer
thread then waits on the lock with every append behind it.

It prints, per phase (before, stall, after): chats by status and the latency of the 200s and the
503s; the slowest `/metrics` and `/readyz` answers and what `/readyz` said, sampled every 100 ms;
and at the end analytics' count against the 200s received (nothing counted without a 200, nothing
lost). `--modes` compares settings, e.g. `--modes "on,off CHAT_OUTBOX_APPEND_TIMEOUT=0"`. The
probes share the client's event loop with the load: their times include the client's own lag,
more so when chat answers thousands of fast 503s than when it holds 32 chats.
Run it under `flock /work/.bench.lock` like every benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import httpx

from .loadgen import LoadResult, Sample, chat_request, percentile, run_load
from .processes import ServiceProcess, chat_env, counted_messages, outbox_drained, seed_users, sqlite_analytics

USERS = 100  # every one exists in analytics: reads are 200s, not 404s


def _hold_lock(path: Path, start: float, seconds: float, held: list[float]) -> None:
    """Take the write lock `start` seconds from now, hold it `seconds`; `held` gets when it was taken and given back."""
    time.sleep(start)
    holder = sqlite3.connect(path, isolation_level=None, timeout=30)
    holder.execute("BEGIN IMMEDIATE")  # chat commits all the time: the lock may take a moment to get
    held.append(time.monotonic())
    time.sleep(seconds)
    holder.execute("ROLLBACK")
    held.append(time.monotonic())
    holder.close()


async def _probe(url: str, stop: float, out: list[tuple[float, str, float, int]]) -> None:
    """GET /metrics and /readyz every 100 ms: (when, path, seconds to answer, status; 0 = no answer in 5 s)."""
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        while time.monotonic() < stop:
            for path in ("/metrics", "/readyz"):
                started = time.monotonic()
                try:
                    status = (await client.get(path)).status_code
                except httpx.HTTPError:
                    status = 0
                out.append((started, path, time.monotonic() - started, status))
            await asyncio.sleep(0.1)


def _phase(samples: list[Sample], start: float, end: float) -> dict[str, object]:
    chosen = [s for s in samples if start <= s.started < end]
    statuses: dict[int, int] = {}
    for sample in chosen:
        statuses[sample.status] = statuses.get(sample.status, 0) + 1
    report: dict[str, object] = {"statuses": statuses}
    for status in (200, 503):
        latencies = [s.latency * 1000 for s in chosen if s.status == status]
        if latencies:
            report[f"{status}_ms"] = {q: round(percentile(latencies, v), 1) for q, v in (("p50", 0.5), ("p99", 0.99))} | {
                "max": round(max(latencies), 1)
            }
    return report


def _probes(probes: list[tuple[float, str, float, int]], start: float, end: float) -> dict[str, object]:
    chosen = [p for p in probes if start <= p[0] < end]
    report: dict[str, object] = {}
    for path in ("/metrics", "/readyz"):
        mine = [p for p in chosen if p[1] == path]
        if mine:
            statuses: dict[int, int] = {}
            for p in mine:
                statuses[p[3]] = statuses.get(p[3], 0) + 1
            report[path] = {"slowest_ms": round(max(p[2] for p in mine) * 1000, 1), "statuses": statuses}
    return report


def run_round(
    work: Path, analytics: ServiceProcess, db: Path, n: int, extra: dict[str, str], args: argparse.Namespace
) -> dict[str, object]:
    outbox = work / f"outbox-{n}.sqlite3"
    env = chat_env(analytics.url, outbox, CHAT_LOG_LEVEL="WARNING", **extra)
    chat = ServiceProcess("chat_service.main:app", extra_args=("--loop", "uvloop"), log_path=work / f"chat-{n}.log", env=env)
    with chat:
        bodies = [chat_request(f"127.0.0.1:{chat.port}", {"user_id": f"stall{u}", "text": "Hello there!"}) for u in range(USERS)]
        asyncio.run(run_load(chat.url, lambda i: bodies[i % USERS], connections=args.connections, seconds=1.0))  # warm-up
        outbox_drained(chat.url, timeout=30.0)  # the warm-up's records are counted before the measured window
        counted_before = counted_messages(db)
        seconds = args.before + args.stall + args.after
        result, probes = LoadResult(), list[tuple[float, str, float, int]]()
        began = time.monotonic()
        held: list[float] = []
        locker = threading.Thread(target=_hold_lock, args=(outbox, args.before, args.stall, held), daemon=True)
        locker.start()

        async def drive() -> None:
            await asyncio.gather(
                run_load(chat.url, lambda i: bodies[i % USERS], connections=args.connections, seconds=seconds, result=result),
                _probe(chat.url, began + seconds, probes),
            )

        asyncio.run(drive())
        locker.join()
        received = sum(s.status == 200 for s in result.samples)
        drained = outbox_drained(chat.url, timeout=30.0)
        counted = counted_messages(db) - counted_before
    # the phases by when the lock was really held (a chat started before it but answered during it counts before)
    edges = {"before": (began, held[0]), "stall": (held[0], held[1]), "after": (held[1], began + seconds)}
    return {
        **{name: _phase(result.samples, *edge) | _probes(probes, *edge) for name, edge in edges.items()},
        "lock_held_s": round(held[1] - held[0], 2),
        "drained": drained,
        "client_errors": result.errors,
        "received_200": received,
        "analytics_counted": counted,
        "counted_without_200": counted - received,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--before", type=float, default=3.0)
    parser.add_argument("--stall", type=float, default=5.0, help="seconds the write lock is held")
    parser.add_argument("--after", type=float, default=4.0)
    parser.add_argument("--modes", default="on,off CHAT_OUTBOX_APPEND_TIMEOUT=0", help="comma-separated: name [VAR=value ...]")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    modes = [(mode.split()[0], dict(pair.split("=", 1) for pair in mode.split()[1:])) for mode in args.modes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        analytics, db = sqlite_analytics(work)
        with analytics:
            seed_users(analytics.url, [f"stall{u}" for u in range(USERS)])
            for n in range(args.rounds * len(modes)):
                name, extra = modes[n % len(modes)]
                print(name, json.dumps(run_round(work, analytics, db, n, extra, args)), flush=True)


if __name__ == "__main__":
    main()
