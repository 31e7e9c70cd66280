"""What the resilience wrappers cost: `uv run python -m load_tests.bench_resilience`.

Against a real local analytics process, it times the same pooled GET sent directly with
`client.send`, through `resilience.send(pipeline, ...)`, and through a hedging pipeline (whose
hedge never fires against a fast peer: what hedging costs a healthy call), alternating rounds so
drift hits all equally; then it times calls refused by an open breaker (no network at all).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from resilience import Pipeline, Policy, classify_httpx, send
from servicekit.transport import PooledTransport

from .processes import ServiceProcess, analytics_env


async def measure(url: str, rounds: int, calls: int) -> dict[str, float]:
    pipeline = Pipeline("bench", Policy(), on=classify_httpx, hooks=())
    hedging = Pipeline("bench-hedged", Policy(hedge_delay=0.2), on=classify_httpx, hooks=())
    direct: list[float] = []
    wrapped: list[float] = []
    hedged: list[float] = []
    async with httpx.AsyncClient(base_url=url, transport=PooledTransport()) as client:
        for _ in range(200):  # warm the pool and the code paths
            await client.send(client.build_request("GET", "/analytics/alice"))
            await send(pipeline, client, client.build_request("GET", "/analytics/alice"))
            await send(hedging, client, client.build_request("GET", "/analytics/alice"))
        for _ in range(rounds):
            started = time.perf_counter()
            for _ in range(calls):
                await client.send(client.build_request("GET", "/analytics/alice"))
            direct.append((time.perf_counter() - started) / calls)
            started = time.perf_counter()
            for _ in range(calls):
                await send(pipeline, client, client.build_request("GET", "/analytics/alice"))
            wrapped.append((time.perf_counter() - started) / calls)
            started = time.perf_counter()
            for _ in range(calls):
                await send(hedging, client, client.build_request("GET", "/analytics/alice"))
            hedged.append((time.perf_counter() - started) / calls)

        open_pipeline = Pipeline("open", Policy(breaker_min_calls=1, breaker_reset=3600), on=classify_httpx, hooks=())
        refused = httpx.AsyncClient(transport=httpx.MockTransport(lambda _: httpx.Response(503)), base_url="http://x")
        await send(open_pipeline, refused, refused.build_request("GET", "/"))
        assert open_pipeline.breaker.state == "open"
        n = 20_000
        started = time.perf_counter()
        for _ in range(n):
            await send(open_pipeline, refused, refused.build_request("GET", "/"))
        open_us = (time.perf_counter() - started) / n * 1e6

        async def never_called(_: float) -> None:
            raise AssertionError("an open breaker must not call")

        started = time.perf_counter()
        for _ in range(n):
            await open_pipeline.call(never_called)
        open_pipeline_us = (time.perf_counter() - started) / n * 1e6
        await refused.aclose()
    plain, through = statistics.median(direct) * 1e6, statistics.median(wrapped) * 1e6
    # Each round pairs the two ways back to back: the median of the paired differences is
    # robust to the machine's drift in a way that a difference of medians is not.
    overhead = statistics.median(w - d for d, w in zip(direct, wrapped, strict=True)) * 1e6
    hedging_overhead = statistics.median(h - d for d, h in zip(direct, hedged, strict=True)) * 1e6
    return {
        "direct_us": round(plain, 1),
        "through_pipeline_us": round(through, 1),
        "overhead_us": round(overhead, 1),
        "overhead_pct": round(overhead / plain * 100, 1),
        "hedged_overhead_us": round(hedging_overhead, 1),
        "open_breaker_us": round(open_us, 1),
        "open_breaker_pipeline_us": round(open_pipeline_us, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-resilience-"))
    analytics = ServiceProcess(
        "analytics_service.main:app",
        extra_args=("--loop", "uvloop", "--http", "httptools"),
        log_path=work / "analytics.log",
        env=analytics_env(f"sqlite:///{work}/a.sqlite3", ANALYTICS_SEED_DEMO_DATA="true", ANALYTICS_LOG_LEVEL="WARNING"),
    )
    with analytics:
        import uvloop

        result = uvloop.run(measure(analytics.url, args.rounds, args.calls))
    print(
        f"pooled GET, direct:           {result['direct_us']} us/call (median of {args.rounds} rounds)\n"
        f"pooled GET, through pipeline: {result['through_pipeline_us']} us/call\n"
        f"overhead (median of paired rounds): {result['overhead_us']} us/call ({result['overhead_pct']}%)\n"
        f"overhead with hedging on (hedge_delay=0.2, never reached): {result['hedged_overhead_us']} us/call\n"
        f"open breaker, per call:       {result['open_breaker_us']} us with an httpx request built and sent "
        f"({result['open_breaker_pipeline_us']} us in the pipeline alone); nothing reaches the network"
    )


if __name__ == "__main__":
    main()
