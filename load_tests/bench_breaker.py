"""Chat against a flaky or slow analytics: how many replies fall back, how often the breaker opens.

    uv run python -m load_tests.bench_breaker                 # 30% of answers reset, both breaker modes
    uv run python -m load_tests.bench_breaker --latency 0.3   # a 300 ms analytics, with and without hedging

Analytics (SQLite) and chat run as real uvicorn processes; a `faultproxy` process between them
cuts a share of answers with a TCP reset (`--before-request`: resets requests before analytics
sees them, which chat's transport replays once on a fresh connection) or delays every answer.
Chat is driven at a steady rate (open loop: a slow reply does not slow the senders), and the
numbers come from chat's own metrics: reads by outcome (ok, or the fallback reason) and
read-breaker openings. Each scenario gets fresh
processes; scenarios alternate over `--rounds` so drift on a shared machine hits them alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from .faultproxy import ProxyProcess
from .loadgen import LoadResult, Sample, _read_response, chat_request, summarize
from .processes import ServiceProcess, analytics_env, chat_env


@dataclass(frozen=True)
class Scenario:
    name: str
    chat_env: dict[str, str]


BREAKER_MODES = (
    Scenario("rate (default)", {"CHAT_ANALYTICS_READ__BREAKER_MODE": "rate"}),
    Scenario("consecutive", {"CHAT_ANALYTICS_READ__BREAKER_MODE": "consecutive"}),
)
SLOW_PEER = (
    Scenario("attempt timeouts only", {}),
    Scenario("hedging after 0.2 s", {"CHAT_ANALYTICS_READ__HEDGE_DELAY": "0.2"}),
)


async def paced_load(url: str, *, rate: float, seconds: float, connections: int = 32, users: int = 200) -> LoadResult:
    """Send chats at `rate` a second for `seconds`, each connection on its own schedule."""
    host = url.removeprefix("http://")
    address, _, port = host.partition(":")
    result = LoadResult()
    started = time.monotonic()
    interval = connections / rate

    async def worker(index: int) -> None:
        reader, writer = await asyncio.open_connection(address, int(port))
        sent = 0
        try:
            while (due := started + index / rate + sent * interval) < started + seconds:
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                body: dict[str, object] = {"user_id": f"flaky-{(index + sent * connections) % users}", "text": "hi"}
                begun = time.monotonic()
                writer.write(chat_request(host, body))
                status, _, _ = await asyncio.wait_for(_read_response(reader), timeout=30)
                result.samples.append(Sample(begun, time.monotonic() - begun, status))
                sent += 1
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            result.errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(worker(i) for i in range(connections)))
    return result


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def run_scenario(
    work: Path, scenario: Scenario, *, fault: tuple[str, float], rate: float, seconds: float, seed: int = 1
) -> dict[str, object]:
    """Fresh analytics, proxy and chat; drive chat; return what chat's metrics say."""
    work.mkdir(parents=True, exist_ok=True)
    analytics = ServiceProcess(
        "analytics_service.main:app",
        log_path=work / "analytics.log",
        env=analytics_env(f"sqlite:///{work}/analytics.sqlite3", ANALYTICS_LOG_LEVEL="WARNING"),
    )
    with analytics, ProxyProcess(("127.0.0.1", analytics.port), seed=seed) as proxy:
        chat = ServiceProcess(
            "chat_service.main:app",
            log_path=work / "chat.log",
            env=chat_env(
                f"http://127.0.0.1:{proxy.port}", work / "outbox.sqlite3", CHAT_LOG_LEVEL="WARNING", **scenario.chat_env
            ),
        )
        with chat:
            proxy.set(*fault)
            load = asyncio.run(paced_load(chat.url, rate=rate, seconds=seconds))
            metrics = httpx.get(chat.url + "/metrics", timeout=10).text
    reads = _metric(metrics, "chat_analytics_calls_total", operation="read")
    ok = _metric(metrics, "chat_analytics_calls_total", operation="read", outcome="ok")
    reasons = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'chat_analytics_calls_total\{operation="read",outcome="(\w+)"\} ([\d.e+]+)', metrics)
        if m.group(1) != "ok"
    }
    summary = summarize(load.samples, seconds)
    return {
        "scenario": scenario.name,
        "chats": summary["requests"],
        "non_2xx": summary["non_2xx"] + load.errors,
        "p50_ms": summary["p50_ms"],
        "p99_ms": summary["p99_ms"],
        "fallback_pct": round(100 * (reads - ok) / reads, 2) if reads else float("nan"),
        "fallbacks_by_reason": reasons,
        "breaker_openings": int(_metric(metrics, "chat_breaker_transitions_total", state="open", target="analytics-read")),
        "retries": int(_metric(metrics, "chat_analytics_retries_total", target="analytics-read")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reset", type=float, default=0.3, help="share of answers the proxy cuts with a reset")
    parser.add_argument("--before-request", action="store_true", help="reset requests before analytics sees them instead")
    parser.add_argument("--latency", type=float, default=None, help="instead: seconds the proxy adds to every answer")
    parser.add_argument("--rate", type=float, default=200.0, help="chats a second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    fault = ("reset" if args.before_request else "cut", args.reset)
    if args.latency is not None:
        fault = ("latency", args.latency)
    scenarios = SLOW_PEER if args.latency is not None else BREAKER_MODES
    work = Path(tempfile.mkdtemp(prefix="bench-breaker-"))
    print(f"fault: {fault[0]} {fault[1]}; {args.rate:g} chats/s for {args.seconds:g} s; {args.rounds} rounds")
    for round_ in range(args.rounds):
        for index, scenario in enumerate(scenarios):
            result = run_scenario(
                work / f"r{round_}-{index}", scenario, fault=fault, rate=args.rate, seconds=args.seconds, seed=round_
            )
            print(json.dumps({"round": round_ + 1, **result}))


if __name__ == "__main__":
    main()
