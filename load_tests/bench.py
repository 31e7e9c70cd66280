"""Throughput benchmark: chat against floor apps, on the offline path and on the model path.

`uv run python -m load_tests.bench` starts analytics, the floor apps and the chat service as real
uvicorn processes (uvloop + httptools), drives each with the same generator and connection count,
and prints req/s, p50/p99, CPU per request and the chat/floor ratios. `--soak 300` also samples
chat's RSS.

Two paths (`--paths offline,model`, both by default):
- offline: chat runs the offline model (resilience, recording); the floor makes one pooled GET.
- model: a fake OpenAI-compatible model with `--model-think` (200 ms) think time answers; chat
  calls it through its resilient model chain, the floor makes the GET and one chat-completions
  call with the official openai client (aiohttp transport, and httpx2's default pool), under
  `--model-connections` (200) concurrent chats.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import httpx

from .fake_model import fake_model_process
from .loadgen import LoadResult, chat_request, run_load, summarize
from .processes import LOOP_FLAGS, ServiceProcess, analytics_env, chat_env

FAST = ("--loop", "uvloop", "--http", "httptools")  # the floors and the fake model; our services run as shipped


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


async def measure(
    url: str, *, connections: int, seconds: float, warmup: float, users: int, pid: int | None = None
) -> dict[str, float]:
    """Load `url`; with `pid`, also the server's CPU milliseconds per request (the measured window only)."""
    make = _request_factory(url.split("//")[1], users)
    await run_load(url, make, connections=connections, seconds=warmup, check=_ok)
    cpu_before = cpu_seconds(pid) if pid else 0.0
    result = await run_load(url, make, connections=connections, seconds=seconds, check=_ok, result=LoadResult())
    summary = summarize(result.samples, seconds)
    summary["errors"] = result.errors
    if pid and result.samples:
        cpu_ms = (cpu_seconds(pid) - cpu_before) * 1000
        summary["cpu_ms_per_request"] = round(cpu_ms / len(result.samples), 3)
        # Per answered chat too: a closed-loop client that ignores Retry-After resends a refused
        # request at once, and thousands of cheap 503s would make the per-request figure meaningless.
        answered = sum(1 for sample in result.samples if sample.status == 200)
        if answered:
            summary["cpu_ms_per_200"] = round(cpu_ms / answered, 3)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--soak", type=float, default=0.0, help="then run chat this many seconds, sampling RSS")
    parser.add_argument("--chat-workers", type=int, default=1, help="uvicorn workers for chat (the floor keeps 1)")
    parser.add_argument("--paths", default="offline,model", help="comma-separated: offline, model")
    parser.add_argument("--model-connections", type=int, default=200, help="concurrent chats on the model path")
    parser.add_argument("--model-think", type=float, default=0.2, help="the fake model's think time, seconds")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    paths = {path.strip() for path in args.paths.split(",") if path.strip()}

    work = Path(tempfile.mkdtemp(prefix="bench-"))
    analytics = ServiceProcess(
        "analytics_service.main:app",
        extra_args=LOOP_FLAGS,
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
        if "offline" in paths:
            results.update(offline_path(analytics, work, args))
        if "model" in paths:
            results["model_path"] = model_path(analytics, work, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def _run(process: ServiceProcess, args: argparse.Namespace, connections: int) -> dict[str, float]:
    return asyncio.run(
        measure(
            process.url,
            connections=connections,
            seconds=args.seconds,
            warmup=args.warmup,
            users=args.users,
            pid=process.pid if process.workers == 1 else None,
        )
    )


def offline_path(analytics: ServiceProcess, work: Path, args: argparse.Namespace) -> dict[str, object]:
    """Chat on the offline model against a floor that makes the one analytics GET."""
    results: dict[str, object] = {}
    for name, transport in (("floor_httpx", "httpx"), ("floor", "aiohttp")):
        floor = ServiceProcess(
            "load_tests.floor_app:app",
            extra_args=FAST,
            log_path=work / "floor.log",
            env={"ANALYTICS_URL": analytics.url, "FLOOR_TRANSPORT": transport},
        )
        with floor:
            results[name] = _run(floor, args, args.connections)
        print(f"{name}:", json.dumps(results[name]), flush=True)
    chat = ServiceProcess(
        "chat_service.main:app",
        workers=args.chat_workers,
        extra_args=LOOP_FLAGS,
        log_path=work / "chat.log",
        env=chat_env(analytics.url, work / "outbox.sqlite3", CHAT_LOG_LEVEL="WARNING"),
    )
    with chat:
        results["chat"] = _run(chat, args, args.connections)
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
    return results


def model_path(analytics: ServiceProcess, work: Path, args: argparse.Namespace) -> dict[str, object]:
    """Chat through its resilient model chain against a floor that makes the GET and one model call."""
    results: dict[str, object] = {"connections": args.model_connections, "think_s": args.model_think}
    model = fake_model_process("model", think=args.model_think, log_path=work / "model.log", fast=True)
    with model:
        for name, client in (("floor_model_httpx2", "httpx2"), ("floor_model", "aiohttp")):
            floor = ServiceProcess(
                "load_tests.floor_app:app",
                extra_args=FAST,
                log_path=work / "floor-model.log",
                env={
                    "ANALYTICS_URL": analytics.url,
                    "FLOOR_TRANSPORT": "aiohttp",
                    "FLOOR_MODEL_URL": model.url + "/v1",
                    "FLOOR_MODEL_CLIENT": client,
                },
            )
            with floor:
                results[name] = _run(floor, args, args.model_connections)
            print(f"{name}:", json.dumps(results[name]), flush=True)
        chat = ServiceProcess(
            "chat_service.main:app",
            workers=args.chat_workers,
            extra_args=LOOP_FLAGS,
            log_path=work / "chat-model.log",
            env=chat_env(
                analytics.url,
                work / "outbox-model.sqlite3",
                CHAT_LOG_LEVEL="WARNING",
                model_url=model.url,
                CHAT_LLM_MAX_CONCURRENCY=str(args.model_connections),
            ),
        )
        with chat:
            results["chat_model"] = _run(chat, args, args.model_connections)
        print("chat_model:", json.dumps(results["chat_model"]), flush=True)
    chat_result: dict[str, float] = results["chat_model"]  # type: ignore[assignment]
    for name in ("floor_model", "floor_model_httpx2"):
        floor_result: dict[str, float] = results[name]  # type: ignore[assignment]
        results[f"rps_ratio_to_{name}"] = round(chat_result["rps"] / floor_result["rps"], 3) if floor_result["rps"] else 0.0
        if "cpu_ms_per_200" in chat_result and floor_result.get("cpu_ms_per_200"):
            results[f"cpu_ratio_to_{name}"] = round(chat_result["cpu_ms_per_200"] / floor_result["cpu_ms_per_200"], 2)
    print(
        "model path: "
        + "; ".join(f"{key} = {value}" for key, value in results.items() if key.startswith(("rps_ratio", "cpu_ratio"))),
        flush=True,
    )
    return results


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
