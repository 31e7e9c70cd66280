"""Throughput benchmark: chat (offline model, resilience, recording) against a floor app.

`uv run python -m load_tests.bench` starts analytics, the floor app and the chat service as real
uvicorn processes (uvloop + httptools), drives each with the same generator and connection count,
and prints req/s, p50/p99 and the chat/floor ratio. `--soak 300` also samples chat's RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import httpx

from .loadgen import LoadResult, chat_request, run_load, summarize
from .processes import ServiceProcess, analytics_env, chat_env

FAST = ("--loop", "uvloop", "--http", "httptools")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _request_factory(host: str, users: int):  # type: ignore[no-untyped-def]
    bodies = [chat_request(host, {"user_id": f"bench{n}", "text": "Hello there!"}) for n in range(users)]
    return lambda n: bodies[n % users]


def _ok(status: int, body: bytes) -> bool:
    return status == 200 and b'"reply"' in body


async def measure(url: str, *, connections: int, seconds: float, warmup: float, users: int) -> dict[str, float]:
    make = _request_factory(url.split("//")[1], users)
    await run_load(url, make, connections=connections, seconds=warmup, check=_ok)
    result = await run_load(url, make, connections=connections, seconds=seconds, check=_ok, result=LoadResult())
    summary = summarize(result.samples, seconds)
    summary["errors"] = result.errors
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--soak", type=float, default=0.0, help="then run chat this many seconds, sampling RSS")
    parser.add_argument("--chat-workers", type=int, default=1, help="uvicorn workers for chat (the floor keeps 1)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-"))
    analytics = ServiceProcess(
        "analytics_service.main:app",
        extra_args=FAST,
        log_path=work / "analytics.log",
        env=analytics_env(f"sqlite:///{work}/analytics.sqlite3", ANALYTICS_LOG_LEVEL="WARNING"),
    )
    results: dict[str, object] = {"connections": args.connections, "seconds": args.seconds}
    with analytics:
        for n in range(0, args.users, 500):  # every bench user exists: reads are 200s, not 404s
            items = [
                {"user_id": f"bench{i}", "message_id": "seed", "timestamp": "2025-01-01T00:00:00Z"}
                for i in range(n, min(n + 500, args.users))
            ]
            httpx.post(analytics.url + "/messages/batch", json={"items": items}, timeout=30).raise_for_status()
        for name, transport in (("floor_httpx", "httpx"), ("floor", "aiohttp")):
            floor = ServiceProcess(
                "load_tests.floor_app:app",
                extra_args=FAST,
                log_path=work / "floor.log",
                env={"ANALYTICS_URL": analytics.url, "FLOOR_TRANSPORT": transport},
            )
            with floor:
                results[name] = asyncio.run(
                    measure(floor.url, connections=args.connections, seconds=args.seconds, warmup=args.warmup, users=args.users)
                )
            print(f"{name}:", json.dumps(results[name]), flush=True)
        chat = ServiceProcess(
            "chat_service.main:app",
            workers=args.chat_workers,
            extra_args=FAST,
            log_path=work / "chat.log",
            env=chat_env(analytics.url, work / "outbox.sqlite3", CHAT_LOG_LEVEL="WARNING"),
        )
        with chat:
            results["chat"] = asyncio.run(
                measure(chat.url, connections=args.connections, seconds=args.seconds, warmup=args.warmup, users=args.users)
            )
            print("chat: ", json.dumps(results["chat"]), flush=True)
            if args.soak:
                results["soak"] = soak(chat, args)
        chat_rps = results["chat"]["rps"]  # type: ignore[index]
        for name in ("floor", "floor_httpx"):
            floor_rps = results[name]["rps"]  # type: ignore[index]
            results[f"ratio_to_{name}"] = round(chat_rps / floor_rps, 3) if floor_rps else 0.0
    print(
        f"chat/floor (same transport) = {results['ratio_to_floor']}; "
        f"chat/floor (httpx default pool) = {results['ratio_to_floor_httpx']}",
        flush=True,
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def soak(chat: ServiceProcess, args: argparse.Namespace) -> dict[str, object]:
    samples: list[tuple[float, int]] = []
    started = time.monotonic()

    async def sample_rss() -> None:
        while time.monotonic() - started < args.soak:
            samples.append((round(time.monotonic() - started, 1), rss_kib(chat.pid)))
            await asyncio.sleep(5)

    async def both() -> dict[str, float]:
        sampler = asyncio.create_task(sample_rss())
        summary = await measure(chat.url, connections=args.connections, seconds=args.soak, warmup=0, users=args.users)
        await sampler
        return summary

    summary = both_result = asyncio.run(both())
    after_warm = [kib for t, kib in samples if t >= 30] or [kib for _, kib in samples]
    growth = (after_warm[-1] - after_warm[0]) / after_warm[0] if after_warm and after_warm[0] else 0.0
    result = {"load": both_result, "rss_kib": samples, "rss_growth_after_30s": round(growth, 4)}
    print(
        "soak: ",
        json.dumps(
            {
                "load": summary,
                "rss_growth_after_30s": result["rss_growth_after_30s"],
                "rss_first_last_kib": [samples[0][1], samples[-1][1]],
            }
        ),
        flush=True,
    )
    return result


if __name__ == "__main__":
    main()
