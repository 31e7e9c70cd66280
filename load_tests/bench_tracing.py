"""What tracing costs, on and off: `uv run python -m load_tests.bench_tracing`.

1. The resilience pipeline's own CPU: `pipeline.call` around an attempt that answers at once (no
   network), without a tracer (tracing off), with a sampled tracer (spans recorded and exported
   to nowhere) and with an unsampled one (`OTEL_TRACES_SAMPLER=always_off`). With
   `--baseline-resilience PATH` (a checkout of another branch, e.g. main), that checkout's
   `resilience` package is loaded beside ours and timed in the same rounds: what tracing support
   costs a pipeline with tracing off.
2. A whole chat, in process (offline model; analytics a MockTransport answering at once): one
   app with tracing off, one with tracing on (the SDK, a batch processor, an exporter that drops
   the spans), in alternating rounds.

Rounds alternate so drift hits every variant alike; each figure is the median over rounds, in
microseconds per call. Run it under `flock /work/.bench.lock` on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

import resilience
from servicekit.tracing import Tracing


class DropSpans(SpanExporter):
    """Exports nowhere: what remains is the cost of making, recording and batching spans."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def load_baseline(path: Path) -> ModuleType:
    """Another checkout's `resilience` package, imported as `resilience_baseline` beside ours."""
    spec = importlib.util.spec_from_file_location(
        "resilience_baseline", path / "resilience" / "__init__.py", submodule_search_locations=[str(path / "resilience")]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["resilience_baseline"] = module
    spec.loader.exec_module(module)
    return module


async def _answer(_: float) -> int:
    return 1


def _calling(call: Callable[[Callable[[float], Awaitable[int]]], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
    return lambda: call(_answer)


async def time_calls(call: Callable[[], Awaitable[Any]], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        await call()
    return (time.perf_counter() - started) / calls * 1e6


async def alternate(variants: dict[str, Callable[[], Awaitable[Any]]], rounds: int, calls: int) -> dict[str, float]:
    for call in variants.values():  # warm up
        await time_calls(call, max(1, calls // 10))
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, call in variants.items():
            samples[name].append(await time_calls(call, calls))
    return {name: round(statistics.median(values), 2) for name, values in samples.items()}


async def pipeline_costs(rounds: int, calls: int, baseline: Path | None) -> dict[str, float]:
    sampled = TracerProvider(shutdown_on_exit=False)
    sampled.add_span_processor(BatchSpanProcessor(DropSpans()))
    unsampled = TracerProvider(sampler=ALWAYS_OFF, shutdown_on_exit=False)

    def pipeline(module: ModuleType, **options: Any) -> Any:
        return module.Pipeline("bench", module.Policy(), on=module.classify_httpx, hooks=(), **options)

    variants: dict[str, Callable[[Callable[[float], Awaitable[int]]], Awaitable[Any]]] = {}
    if baseline is not None:
        variants["baseline checkout, no tracer"] = pipeline(load_baseline(baseline)).call
    variants["this checkout, no tracer (off)"] = pipeline(resilience).call
    variants["this checkout, sampled tracer (on)"] = pipeline(resilience, tracer=sampled.get_tracer("bench")).call
    variants["this checkout, unsampled tracer"] = pipeline(resilience, tracer=unsampled.get_tracer("bench")).call
    try:
        return await alternate({name: _calling(call) for name, call in variants.items()}, rounds, calls)
    finally:
        sampled.shutdown()


async def chat_costs(rounds: int, calls: int) -> dict[str, float]:
    from chat_service.core.config import Settings
    from chat_service.main import create_app

    async def analytics(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"message_count": 3} if request.method == "GET" else {})

    work = Path(tempfile.mkdtemp(prefix="bench-tracing-"))

    def app(name: str, tracing: Tracing | None) -> Any:
        settings = Settings(
            analytics_url="http://analytics",
            outbox_path=str(work / f"{name}.sqlite3"),
            llm_provider="offline",
            log_level="WARNING",
            log_format="json",
        )
        return create_app(settings, transport=httpx.MockTransport(analytics), tracing=tracing)

    off = app("off", None)
    on = app("on", Tracing("chat", processor=BatchSpanProcessor(DropSpans())))
    message = {"user_id": "bench", "text": "Hello, how are you?"}
    async with LifespanManager(off) as off_app, LifespanManager(on) as on_app:
        clients = {
            "chat, tracing off": httpx.AsyncClient(transport=httpx.ASGITransport(off_app.app), base_url="http://chat"),
            "chat, tracing on": httpx.AsyncClient(transport=httpx.ASGITransport(on_app.app), base_url="http://chat"),
        }

        def posting(client: httpx.AsyncClient) -> Callable[[], Awaitable[None]]:
            async def post() -> None:
                response = await client.post("/chat/", json=message)
                assert response.status_code == 200, response.text

            return post

        try:
            return await alternate({name: posting(client) for name, client in clients.items()}, rounds, calls)
        finally:
            for client in clients.values():
                await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--calls", type=int, default=5000, help="pipeline calls per variant per round")
    parser.add_argument("--chats", type=int, default=300, help="chats per variant per round")
    parser.add_argument("--baseline-resilience", type=Path, help="a checkout whose resilience package to compare with")
    parser.add_argument("--pipeline-only", action="store_true")
    args = parser.parse_args()
    print("pipeline.call around an attempt that answers at once (us per call, median of rounds):")
    for name, micros in asyncio.run(pipeline_costs(args.rounds, args.calls, args.baseline_resilience)).items():
        print(f"  {name:<40} {micros:8.2f}")
    if args.pipeline_only:
        return
    print("a whole chat in process, offline model (us per chat, median of rounds):")
    for name, micros in asyncio.run(chat_costs(max(3, args.rounds // 4), args.chats)).items():
        print(f"  {name:<40} {micros:8.2f}")


if __name__ == "__main__":
    main()
