"""The model path under failure: a primary and a fallback fake model, 16 clients, five phases.

`flock /work/.bench.lock uv run python -m load_tests.bench_model` starts analytics, two fake
OpenAI-compatible models (100 ms think time each) and chat (the primary, one fallback,
CHAT_LLM_TIMEOUT=1) as real uvicorn processes, keeps 16 closed-loop clients chatting, and
switches the fakes phase by phase: both answering; the primary answering 503; the primary
hanging; both answering 503; both back. Between phases the primary recovers under load.

Per phase it prints one JSON line: chats, statuses, how many 503s carried Retry-After,
p50/p99 overall and after detection (from the moment chat's /health/dependencies shows the
breakers the phase should open), model requests per chat at each fake, and, for the last phase,
the time until the primary answered again. A last line checks the issue's goals.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .fake_model import fake_model_process
from .loadgen import LoadResult, Sample, chat_request, percentile, run_load
from .processes import LOOP_FLAGS, ServiceProcess, analytics_env, chat_env

Health = dict[str, Any]


@dataclass
class Tally:
    """Counts replies by the server that wrote them, and when the primary first answered."""

    by_server: Counter[str] = field(default_factory=Counter)
    first_primary: float | None = None

    def check(self, status: int, body: bytes) -> bool:
        if status == 200:
            server = "primary" if b"primary here" in body else "fallback" if b"fallback here" in body else "other"
            self.by_server[server] += 1
            if server == "primary" and self.first_primary is None:
                self.first_primary = time.monotonic()
            return b'"reply"' in body
        return status in (503, 504)


@dataclass
class Stack:
    chat: ServiceProcess
    primary: ServiceProcess
    fallback: ServiceProcess
    http: httpx.AsyncClient

    async def health(self) -> Health:
        return (await self.http.get(self.chat.url + "/health/dependencies")).json()  # type: ignore[no-any-return]

    async def requests(self) -> tuple[int, int]:
        stats = [(await self.http.get(p.url + "/stats")).json() for p in (self.primary, self.fallback)]
        return int(stats[0]["requests"]), int(stats[1]["requests"])

    async def switch(self, primary: str, fallback: str) -> None:
        await self.http.post(self.primary.url + "/control", json={"mode": primary})
        await self.http.post(self.fallback.url + "/control", json={"mode": fallback})


def breakers(health: Health) -> list[str]:
    return [endpoint["breaker"] for endpoint in health["llm"]["endpoints"]]


def _latencies_ms(samples: list[Sample]) -> dict[str, float]:
    latencies = [s.latency for s in samples]
    return {
        "chats": len(samples),
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
    }


async def _watch(stack: Stack, load: asyncio.Task[LoadResult], done: Callable[[Health], bool]) -> float | None:
    while not load.done():
        if done(await stack.health()):
            return time.monotonic()
        await asyncio.sleep(0.02)
    return None


async def phase(
    stack: Stack,
    name: str,
    seconds: float,
    *,
    modes: tuple[str, str],
    detected: Callable[[Health], bool],
    make: Callable[[int], bytes],
    clients: int,
) -> dict[str, Any]:
    """Switch the fakes, keep `clients` chatting for `seconds`, and measure."""
    before = await stack.requests()
    await stack.switch(*modes)
    tally = Tally()
    started = time.monotonic()
    load = asyncio.create_task(run_load(stack.chat.url, make, connections=clients, seconds=seconds, check=tally.check))
    detected_at = await _watch(stack, load, detected)
    result = await load
    after = await stack.requests()
    samples = result.samples
    chats = len(samples) or 1
    unavailable = [s for s in samples if s.status == 503]
    report: dict[str, Any] = {
        "phase": name,
        **_latencies_ms(samples),
        "statuses": dict(sorted(Counter(s.status for s in samples).items())),
        "answered_by": dict(tally.by_server),
        "503_with_retry_after": sum(1 for s in unavailable if s.retry_after),
        "connection_errors": result.errors,
        "detection_s": round(detected_at - started, 3) if detected_at is not None else None,
        "after_detection": _latencies_ms([s for s in samples if detected_at is not None and s.started >= detected_at]),
        "primary_requests_per_chat": round((after[0] - before[0]) / chats, 4),
        "fallback_requests_per_chat": round((after[1] - before[1]) / chats, 4),
    }
    if tally.first_primary is not None:
        report["primary_answered_after_s"] = round(tally.first_primary - started, 3)
    print(json.dumps(report), flush=True)
    return report


def goals(reports: dict[str, dict[str, Any]], breaker_reset: float) -> dict[str, bool]:
    down, hang, both, back = (reports[n] for n in ("primary_503", "primary_hang", "both_down", "both_back"))
    return {
        "primary_503: every chat 200 from the fallback": down["statuses"] == {200: down["chats"]},
        "primary_503: primary requests per chat <= 0.1": down["primary_requests_per_chat"] <= 0.1,
        "primary_hang: every chat 200": hang["statuses"] == {200: hang["chats"]},
        "primary_hang: p99 after detection <= 600 ms": hang["after_detection"]["p99_ms"] <= 600,
        "both_down: every chat 503 with Retry-After": both["statuses"] == {503: both["chats"]}
        and both["503_with_retry_after"] == both["chats"],
        "both_down: p99 after detection <= 100 ms": both["after_detection"]["p99_ms"] <= 100,
        "both_down: model requests per chat <= 0.2": both["primary_requests_per_chat"] + both["fallback_requests_per_chat"]
        <= 0.2,
        "both_back: primary answers within breaker reset + 2 s": back.get("primary_answered_after_s", 1e9) <= breaker_reset + 2,
    }


async def run(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    bodies = [chat_request(stack.chat.url.split("//")[1], {"user_id": f"bench{n}", "text": "Hello there!"}) for n in range(1000)]

    def make(n: int) -> bytes:
        return bodies[n % len(bodies)]

    def primary_is(state: str) -> Callable[[Health], bool]:
        return lambda health: breakers(health)[0] == state

    def run_phase(name: str, seconds: float, modes: tuple[str, str], detected: Callable[[Health], bool]) -> Any:
        return phase(stack, name, seconds, modes=modes, detected=detected, make=make, clients=args.clients)

    recover = args.breaker_reset + 3
    reports = {}
    await run_phase("warmup", 3, ("ok", "ok"), lambda _: True)
    for name, seconds, modes, detected in (
        ("baseline", args.seconds, ("ok", "ok"), lambda _: True),
        ("primary_503", args.seconds, ("503", "ok"), primary_is("open")),
        ("recover", recover, ("ok", "ok"), primary_is("closed")),
        ("primary_hang", args.seconds, ("hang", "ok"), primary_is("open")),
        ("recover", recover, ("ok", "ok"), primary_is("closed")),
        ("both_down", args.seconds, ("503", "503"), lambda h: breakers(h) == ["open", "open"]),
        ("both_back", recover, ("ok", "ok"), lambda h: breakers(h) == ["closed", "closed"]),
    ):
        reports[name] = await run_phase(name, seconds, modes, detected)
    verdict = goals(reports, args.breaker_reset)
    print(json.dumps({"goals": verdict, "all_met": all(verdict.values())}), flush=True)
    return {"phases": reports, "goals": verdict}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each failure phase")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--think", type=float, default=0.1, help="the fake models' think time, seconds")
    parser.add_argument("--breaker-reset", type=float, default=5.0, help="CHAT_LLM_POLICY__BREAKER_RESET")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-model-"))
    analytics = ServiceProcess(
        "analytics_service.main:app",
        extra_args=LOOP_FLAGS,
        log_path=work / "analytics.log",
        env=analytics_env(f"sqlite:///{work}/analytics.sqlite3", ANALYTICS_LOG_LEVEL="WARNING"),
    )
    primary = fake_model_process("primary", think=args.think, log_path=work / "primary.log", fast=True)
    fallback = fake_model_process("fallback", think=args.think, log_path=work / "fallback.log", fast=True)
    fallbacks = [{"base_url": fallback.url + "/v1", "model": "fallback-model", "api_key": "sk-bench"}]
    chat = ServiceProcess(
        "chat_service.main:app",
        extra_args=LOOP_FLAGS,
        log_path=work / "chat.log",
        env=chat_env(
            analytics.url,
            work / "outbox.sqlite3",
            CHAT_LOG_LEVEL="WARNING",
            model_url=primary.url,
            CHAT_MODEL="primary-model",
            CHAT_LLM_FALLBACKS=json.dumps(fallbacks),
            CHAT_LLM_TIMEOUT="1",
            CHAT_LLM_POLICY__BREAKER_RESET=str(args.breaker_reset),
        ),
    )
    processes = (analytics, primary, fallback, chat)
    try:
        for process in processes:
            process.start(wait=0)
        for process in processes:
            process.wait_ready()

        async def with_client() -> dict[str, Any]:
            async with httpx.AsyncClient(timeout=5) as http:
                return await run(Stack(chat, primary, fallback, http), args)

        results = asyncio.run(with_client())
    finally:
        for process in reversed(processes):
            process.stop()
    print(f"logs: {work}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
