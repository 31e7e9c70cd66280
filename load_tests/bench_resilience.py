"""What the analytics call costs: `uv run python -m load_tests.bench_resilience`.

Against a real local analytics process, it times the same pooled GET sent directly with
`client.send`, through `resilience.send(pipeline, ...)`, and through a hedging pipeline (whose
hedge never fires against a fast peer: what hedging costs a healthy call), alternating rounds so
drift hits all equally; then it times calls refused by an open breaker (no network at all). Last,
it measures the client's CPU per pooled GET at 1, 32 and 100 concurrent calls, and the wall time
of one call at a time, for our transport, httpx's default one and any `--transport` given, again
in alternating rounds (`--transports-only` runs just that part).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import httpx

from resilience import Pipeline, Policy, classify_httpx, send
from servicekit.transport import AiohttpTransport

from .processes import LOOP_FLAGS, ServiceProcess, analytics_env

TransportFactory = Callable[[], httpx.AsyncBaseTransport]


async def measure(url: str, rounds: int, calls: int, transport: TransportFactory = AiohttpTransport) -> dict[str, float]:
    pipeline = Pipeline("bench", Policy(), on=classify_httpx, hooks=())
    hedging = Pipeline("bench-hedged", Policy(hedge_delay=0.2), on=classify_httpx, hooks=())
    direct: list[float] = []
    wrapped: list[float] = []
    hedged: list[float] = []
    async with httpx.AsyncClient(base_url=url, transport=transport()) as client:
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


TRANSPORTS: dict[str, TransportFactory] = {"ours": AiohttpTransport, "httpx default": httpx.AsyncHTTPTransport}


def load_transport(spec: str) -> tuple[str, TransportFactory]:
    """`NAME=module:Class` or `NAME=path/to/file.py:Class`: a transport to compare with ours.

    For example the hand-written transport this project used before, from git history:
    `git show 26adc80:servicekit/transport.py > /tmp/old_transport.py`, then
    `--transport old=/tmp/old_transport.py:PooledTransport`.
    """
    name, _, target = spec.partition("=")
    location, _, attribute = target.rpartition(":")
    if location.endswith(".py"):
        module_spec = importlib.util.spec_from_file_location(Path(location).stem, location)
        assert module_spec is not None and module_spec.loader is not None, location
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_spec.name] = module  # dataclasses look their module up there
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(location)
    factory: TransportFactory = getattr(module, attribute)
    return name, factory


async def _per_call(client: httpx.AsyncClient, concurrency: int, calls: int) -> tuple[float, float]:
    """Client CPU (this process, all threads) and wall time per GET, in us, `concurrency` calls at a time."""

    async def worker(share: int) -> None:
        for _ in range(share):
            response = await client.get("/analytics/alice")
            assert response.status_code == 200, response.status_code

    shares = [calls // concurrency + (1 if n < calls % concurrency else 0) for n in range(concurrency)]
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(share) for share in shares))
    return (time.process_time() - cpu) / calls * 1e6, (time.perf_counter() - wall) / calls * 1e6


async def transport_cost(
    url: str,
    transports: Mapping[str, TransportFactory],
    *,
    concurrencies: Sequence[int] = (1, 32, 100),
    rounds: int = 5,
    calls: int = 2000,
) -> dict[int, dict[str, list[tuple[float, float]]]]:
    """Per concurrency, per transport: (CPU, wall) us per call of each round; transports alternate."""
    clients = {name: httpx.AsyncClient(base_url=url, transport=factory(), timeout=10) for name, factory in transports.items()}
    results: dict[int, dict[str, list[tuple[float, float]]]] = {}
    try:
        for concurrency in concurrencies:
            for client in clients.values():  # warm: open the connections, take the code paths
                await _per_call(client, concurrency, max(calls // 4, concurrency * 4))
            per_transport: dict[str, list[tuple[float, float]]] = {name: [] for name in clients}
            for number in range(rounds):
                order = list(clients) if number % 2 == 0 else list(reversed(clients))
                for name in order:
                    per_transport[name].append(await _per_call(clients[name], concurrency, calls))
            results[concurrency] = per_transport
    finally:
        for client in clients.values():
            await client.aclose()
    return results


def print_transport_cost(results: Mapping[int, Mapping[str, Sequence[tuple[float, float]]]]) -> None:
    def cell(name: str, values: list[float]) -> str:
        return f"{name} {statistics.median(values):.0f} [{min(values):.0f}-{max(values):.0f}]"

    print("client CPU per pooled GET, us (median [min-max] of rounds):")
    for concurrency, per_transport in results.items():
        cells = [cell(name, [cpu for cpu, _ in rounds]) for name, rounds in per_transport.items()]
        print(f"  {concurrency:>3} concurrent: " + "; ".join(cells))
    if 1 in results:
        cells = [cell(name, [wall for _, wall in rounds]) for name, rounds in results[1].items()]
        print("one call at a time, wall us per GET (the call's latency): " + "; ".join(cells))


def analytics_process(work: Path) -> ServiceProcess:
    return ServiceProcess(
        "analytics_service.main:app",
        extra_args=LOOP_FLAGS,
        log_path=work / "analytics.log",
        env=analytics_env(f"sqlite:///{work}/a.sqlite3", ANALYTICS_SEED_DEMO_DATA="true", ANALYTICS_LOG_LEVEL="WARNING"),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--cpu-rounds", type=int, default=5, help="rounds of the transport CPU comparison")
    parser.add_argument("--cpu-calls", type=int, default=2000, help="calls per transport per round")
    parser.add_argument("--transports-only", action="store_true", help="only the transport CPU comparison")
    parser.add_argument(
        "--transport",
        action="append",
        default=[],
        metavar="NAME=MODULE:CLASS",
        help="another transport to compare (repeatable); MODULE may be a .py path",
    )
    args = parser.parse_args()
    import uvloop

    transports = {**TRANSPORTS, **dict(load_transport(spec) for spec in args.transport)}
    with analytics_process(Path(tempfile.mkdtemp(prefix="bench-resilience-"))) as analytics:
        if not args.transports_only:
            print_pipeline_cost(uvloop.run(measure(analytics.url, args.rounds, args.calls)), args.rounds)
        cost = uvloop.run(transport_cost(analytics.url, transports, rounds=args.cpu_rounds, calls=args.cpu_calls))
    print_transport_cost(cost)


def print_pipeline_cost(result: Mapping[str, float], rounds: int) -> None:
    print(
        f"pooled GET, direct:           {result['direct_us']} us/call (median of {rounds} rounds)\n"
        f"pooled GET, through pipeline: {result['through_pipeline_us']} us/call\n"
        f"overhead (median of paired rounds): {result['overhead_us']} us/call ({result['overhead_pct']}%)\n"
        f"overhead with hedging on (hedge_delay=0.2, never reached): {result['hedged_overhead_us']} us/call\n"
        f"open breaker, per call:       {result['open_breaker_us']} us with an httpx request built and sent "
        f"({result['open_breaker_pipeline_us']} us in the pipeline alone); nothing reaches the network"
    )


if __name__ == "__main__":
    main()
