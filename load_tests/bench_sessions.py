"""What conversations cost per chat: `flock /work/.bench.lock uv run python -m load_tests.bench_sessions`.

In process, on uvloop. Two measurements:

- added to a chat: POST /chat/ through the ASGI interface (offline model, analytics answered by an
  in-memory transport, the real outbox), with CHAT_SESSIONS_URL=off and with the default SQLite
  file, in alternating rounds so drift hits both sides equally. Each round's chats continue
  `--sessions` conversations, so history is loaded and stored as in real use. The p50 difference
  is what sessions add (goal: <= 1 ms).
- bounded at scale: `--concurrent` (1,000) conversations of `--turns` (20) turns each, all at once,
  straight through `Conversations.turn`; then the largest number of items any conversation holds
  in the store (goal: <= CHAT_SESSION_MAX_ITEMS).
- the trim's cost: `--sessions` conversations of 100 items (50 turns), each given `--trim-turns`
  more turns, with CHAT_SESSION_MAX_ITEMS=100 (every close trims) and with a limit no close reaches;
  the difference in the close's median is what a trim costs.
- a turn on each store (`--stores`: SQLite, and the PostgreSQL and Redis this machine runs): take,
  read and close, one turn at a time over `--sessions` conversations of 10 items (trimmed to 10),
  its wall time (round trips included) and this process's CPU per turn (what a chat pays in CPU).
  PostgreSQL runs in a schema of its own, dropped after; Redis keys expire in the hour.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import uvloop
from asgi_lifespan import LifespanManager

from chat_service.core.config import AdmissionSettings, Settings
from chat_service.main import create_app
from chat_service.sessions import Conversations, open_conversations


def _analytics(request: httpx.Request) -> httpx.Response:
    if request.method == "GET":
        return httpx.Response(200, json={"user_id": "u", "message_count": 3})
    return httpx.Response(200, json={"recorded": 1, "duplicates": 0})


async def _chat_latencies(workdir: Path, sessions_url: str, per_round: int, sessions: int) -> list[float]:
    settings = Settings(
        analytics_url="http://analytics",
        outbox_path=str(workdir / sessions_url.replace("/", "_") / "outbox.sqlite3"),
        llm_provider="offline",
        log_level="WARNING",
        log_format="json",
        sessions_url=sessions_url if sessions_url == "off" else None,
        admission=AdmissionSettings(enabled=False),
    )
    app = create_app(settings, transport=httpx.MockTransport(_analytics))
    samples: list[float] = []
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(manager.app), base_url="http://chat") as client,
    ):
        for i in range(per_round):
            body = {"user_id": f"u{i % sessions}", "text": "hello there", "metadata": {"session_id": "bench"}}
            started = time.perf_counter()
            response = await client.post("/chat/", json=body)
            samples.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
    return samples


def _p99(samples: list[float]) -> float:
    return sorted(samples)[int(len(samples) * 0.99)]


async def added_per_chat(rounds: int, per_round: int, sessions: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        off: list[float] = []
        on: list[float] = []
        # Alternate whole runs, so drift over time hits both sides equally.
        for _ in range(rounds):
            off += await _chat_latencies(workdir, "off", per_round, sessions)
            on += await _chat_latencies(workdir, "sqlite", per_round, sessions)
    p50_off, p50_on = statistics.median(off), statistics.median(on)
    print(f"chat p50 sessions off: {p50_off * 1e3:.3f} ms   p99 {_p99(off) * 1e3:.3f} ms   ({len(off)} chats)")
    print(f"chat p50 sessions on (SQLite): {p50_on * 1e3:.3f} ms   p99 {_p99(on) * 1e3:.3f} ms   ({len(on)} chats)")
    print(f"added by sessions, p50: {(p50_on - p50_off) * 1e3:.3f} ms (goal <= 1 ms)")


async def _store_conversations(
    resources: AsyncExitStack, url: str, max_items: int, failures: list[str] | None = None
) -> Conversations:
    """Conversations on a store (a SQLite file unless told) with generous timeouts: the benchmark measures work, not waits.

    Each store failure is printed, and appended to `failures` when given: a turn that failed did
    less work, so a run with failures must not pass for a fast one.
    """

    def failed(operation: str, reason: str) -> None:
        print("store failure", operation, reason)
        if failures is not None:
            failures.append(operation)

    return await open_conversations(
        resources,
        url=url,
        max_items=max_items,
        ttl=3600,
        call_timeout=30,
        lock_wait=30,
        run_deadline=30,
        idempotency_ttl=3600,
        on_failure=failed,
    )


async def bounded_at_scale(concurrent: int, turns: int, max_items: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sessions.sqlite3"
        async with AsyncExitStack() as resources:
            conversations = await _store_conversations(resources, f"sqlite:///{path}", max_items)

            async def converse(n: int) -> None:
                for t in range(turns):
                    async with conversations.turn(f"user{n}", "s") as turn:
                        await turn.complete(
                            [{"role": "user", "content": f"turn {t}"}, {"role": "assistant", "content": f"reply {t}"}]
                        )

            started = time.perf_counter()
            await asyncio.gather(*(converse(n) for n in range(concurrent)))
            elapsed = time.perf_counter() - started
        rows = sqlite3.connect(path).execute(
            "select max(c), count(*) from (select count(*) c from conversation_items group by session_id)"
        )
        most, sessions = rows.fetchone()
    print(
        f"{concurrent} conversations x {turns} turns at once: {elapsed:.1f} s ({concurrent * turns / elapsed:.0f} turns/s); "
        f"{sessions} conversations stored, the largest holds {most} items (CHAT_SESSION_MAX_ITEMS={max_items})"
    )


def _turn(t: int) -> list[Any]:  # items as chat stores them: the user's message and the reply
    return [
        {"role": "user", "content": f"question {t} " + "q" * 80},
        {"role": "assistant", "type": "message", "content": [{"type": "output_text", "text": f"reply {t} " + "x" * 300}]},
    ]


async def _closes(max_items: int, sessions: int, turns: int) -> tuple[list[float], list[float]]:
    """Per-turn and per-close seconds of `turns` turns in each of `sessions` conversations of 100 items."""
    with tempfile.TemporaryDirectory() as tmp:
        async with AsyncExitStack() as resources:
            conversations = await _store_conversations(resources, f"sqlite:///{tmp}/sessions.sqlite3", max_items)
            for t in range(50):
                for n in range(sessions):
                    async with conversations.turn(f"user{n}", "s") as turn:
                        await turn.complete(_turn(t))
            whole: list[float] = []
            closes: list[float] = []
            for t in range(50, 50 + turns):
                for n in range(sessions):
                    started = time.perf_counter()
                    async with conversations.turn(f"user{n}", "s") as turn:
                        closing = time.perf_counter()
                        await turn.complete(_turn(t))
                        closes.append(time.perf_counter() - closing)
                    whole.append(time.perf_counter() - started)
    return whole, closes


async def trim_cost(sessions: int, turns: int) -> None:
    for label, max_items in (("at the limit, every close trims", 100), ("under the limit, no close trims", 10_000)):
        whole, closes = await _closes(max_items, sessions, turns)
        print(
            f"{label}: turn p50 {statistics.median(whole) * 1e6:.0f} us, "
            f"close p50 {statistics.median(closes) * 1e6:.0f} us ({len(closes)} turns of 100-item conversations)"
        )


async def _turns_on(url: str, sessions: int, turns: int, failures: list[str]) -> tuple[list[float], float]:
    """Wall seconds of each timed turn, and CPU seconds per turn, on the store at `url`."""
    prefix = uuid.uuid4().hex[:8]
    async with AsyncExitStack() as resources:
        conversations = await _store_conversations(resources, url, 10, failures)
        for n in range(sessions):  # every conversation at its limit first: each timed close trims
            for t in range(5):
                async with conversations.turn(f"{prefix}-{n}", "s") as turn:
                    await turn.complete(_turn(t))
        walls: list[float] = []
        cpu = time.process_time()
        for t in range(5, 5 + turns):
            for n in range(sessions):
                started = time.perf_counter()
                async with conversations.turn(f"{prefix}-{n}", "s") as turn:
                    await turn.complete(_turn(t))
                walls.append(time.perf_counter() - started)
        cpu = time.process_time() - cpu
    return walls, cpu / len(walls)


async def per_store(stores: list[str], sessions: int, turns: int) -> None:
    for store in stores:
        with tempfile.TemporaryDirectory() as tmp:
            url, schema = store, None
            if store == "sqlite":
                url = f"sqlite:///{tmp}/sessions.sqlite3"
            elif store.startswith("postgresql://"):
                schema = f"bench_{uuid.uuid4().hex[:8]}"
                async with _postgres(store) as connection:
                    await connection.execute(f"CREATE SCHEMA {schema}")
                url = f"{store}?search_path={schema}"
            failures: list[str] = []
            try:
                walls, cpu = await _turns_on(url, sessions, turns, failures)
            finally:
                if schema is not None:
                    async with _postgres(store) as connection:
                        await connection.execute(f"DROP SCHEMA {schema} CASCADE")
        print(
            f"a turn on {store.split(':')[0]}: wall p50 {statistics.median(walls) * 1e6:.0f} us, "
            f"p99 {_p99(walls) * 1e6:.0f} us, CPU {cpu * 1e6:.0f} us ({len(walls)} turns, each trimming to 10 items)"
            + (f"; {len(failures)} STORE FAILURES: not comparable" if failures else "")
        )


@contextlib.asynccontextmanager
async def _postgres(url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(url)
    try:
        yield connection
    finally:
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=400)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--concurrent", type=int, default=1000)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--max-items", type=int, default=10)
    parser.add_argument("--trim-turns", type=int, default=40, help="timed turns per conversation for the trim's cost")
    parser.add_argument(
        "--stores",
        default="sqlite,postgresql://postgres@127.0.0.1:5432/test,redis://127.0.0.1:6379/0",
        help="comma-separated: 'sqlite' (a temporary file) or a store URL; '' to skip",
    )
    parser.add_argument("--store-turns", type=int, default=20, help="timed turns per conversation on each store")
    args = parser.parse_args()
    uvloop.run(added_per_chat(args.rounds, args.per_round, args.sessions))
    uvloop.run(bounded_at_scale(args.concurrent, args.turns, args.max_items))
    uvloop.run(trim_cost(args.sessions, args.trim_turns))
    uvloop.run(per_store([store for store in args.stores.split(",") if store], args.sessions, args.store_turns))


if __name__ == "__main__":
    main()
