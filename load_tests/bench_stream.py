"""Time to first delta of POST /chat/stream, against POST /chat/'s whole reply, on real processes.

`flock /work/.bench.lock uv run python -m load_tests.bench_stream` starts analytics, a fake
OpenAI-compatible model (`--think` seconds before its first chunk) and two chat services (the
offline model; the fake model, streaming), then keeps `--clients` closed-loop clients on each
route for `--seconds`. One JSON line per (model, route): chats, errors, p50/p99 of the time to
the first delta (streams) and of the whole answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import httpx

from .fake_model import fake_model_process
from .loadgen import percentile
from .processes import LOOP_FLAGS, ServiceProcess, analytics_env, chat_env


async def _one(http: httpx.AsyncClient, url: str, route: str, user: str) -> tuple[float | None, float, bool]:
    """(seconds to the first delta or None, seconds to the whole answer, ok)."""
    body = {"user_id": user, "text": "Hello, how are you today?"}
    started = time.perf_counter()
    if route == "/chat/":
        response = await http.post(url + route, json=body)
        return None, time.perf_counter() - started, response.status_code == 200
    first: float | None = None
    ok = False
    async with http.stream("POST", url + route, json=body) as response:
        async for line in response.aiter_lines():
            if first is None and line == "event: delta":
                first = time.perf_counter() - started
            ok = ok or line == "event: done"
    return first, time.perf_counter() - started, ok and response.status_code == 200


async def measure(url: str, route: str, clients: int, seconds: float) -> dict[str, object]:
    firsts: list[float] = []
    totals: list[float] = []
    errors = 0
    stop = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:

        async def client(number: int) -> None:
            nonlocal errors
            sent = 0
            while time.monotonic() < stop:
                first, total, ok = await _one(http, url, route, f"bench-{number}-{sent % 50}")
                sent += 1
                if not ok:
                    errors += 1
                    continue
                totals.append(total)
                if first is not None:
                    firsts.append(first)

        await asyncio.gather(*(client(n) for n in range(clients)))
    per_second = round(len(totals) / seconds)
    result: dict[str, object] = {"route": route, "chats": len(totals), "errors": errors, "per_second": per_second}
    if firsts:
        result |= {"first_delta_p50_ms": _ms(firsts, 0.5), "first_delta_p99_ms": _ms(firsts, 0.99)}
    if totals:
        result |= {"whole_p50_ms": _ms(totals, 0.5), "whole_p99_ms": _ms(totals, 0.99)}
    return result


def _ms(values: list[float], q: float) -> float:
    return round(percentile(values, q) * 1000, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--think", type=float, default=0.05, help="the fake model's seconds before its first chunk")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    analytics = ServiceProcess(
        "analytics_service.main:app",
        log_path=work / "analytics.log",
        env=analytics_env(f"sqlite:///{work}/a.sqlite3"),
        extra_args=LOOP_FLAGS,
    )
    model = fake_model_process("Fake LLM", think=args.think, log_path=work / "model.log", fast=True)
    with analytics, model:
        offline = ServiceProcess(
            "chat_service.main:app",
            log_path=work / "offline.log",
            env=chat_env(analytics.url, work / "offline.sqlite3", CHAT_LOG_LEVEL="WARNING"),
            extra_args=LOOP_FLAGS,
        )
        online_env = chat_env(
            analytics.url,
            work / "online.sqlite3",
            CHAT_LOG_LEVEL="WARNING",
            model_url=model.url,
            CHAT_MODEL="fake",
        )
        online = ServiceProcess("chat_service.main:app", log_path=work / "online.log", env=online_env, extra_args=LOOP_FLAGS)
        with offline, online:
            for name, chat in (("offline", offline), (f"fake model, think {args.think}s", online)):
                for route in ("/chat/", "/chat/stream"):
                    result = asyncio.run(measure(chat.url, route, args.clients, args.seconds))
                    print(json.dumps({"model": name, "clients": args.clients, **result}))


if __name__ == "__main__":
    main()
