"""A lean HTTP/1.1 keep-alive load generator on raw asyncio streams.

Light enough that, on a 2-core machine, the generator is not what limits the servers it
measures: each request costs it a few tens of microseconds.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Sample:
    started: float
    latency: float
    status: int
    retry_after: bytes | None = None


@dataclass
class LoadResult:
    samples: list[Sample] = field(default_factory=list)
    errors: int = 0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(samples: list[Sample], seconds: float) -> dict[str, float]:
    latencies = [s.latency for s in samples]
    return {
        "requests": len(samples),
        "rps": round(len(samples) / seconds, 1) if seconds else 0.0,
        "non_2xx": sum(1 for s in samples if not 200 <= s.status < 300),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p95_ms": round(percentile(latencies, 0.95) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
    }


def chat_request(host: str, body: dict[str, object]) -> bytes:
    payload = json.dumps(body).encode()
    head = (
        f"POST /chat/ HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode()
    return head + payload


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bytes | None]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    retry_after = None
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
        elif line[:12].lower() == b"retry-after:":
            retry_after = line[12:].strip()
    body = await reader.readexactly(length) if length else b""
    return status, body, retry_after


async def run_load(
    url: str,
    make_request: Callable[[int], bytes],
    *,
    connections: int,
    seconds: float,
    check: Callable[[int, bytes], bool] | None = None,
    result: LoadResult | None = None,
) -> LoadResult:
    """Keep `connections` connections busy for `seconds`; reconnect after any error."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    result = result or LoadResult()
    stop_at = time.monotonic() + seconds
    counter = 0

    async def worker() -> None:
        nonlocal counter
        while time.monotonic() < stop_at:
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError:
                result.errors += 1
                await asyncio.sleep(0.05)
                continue
            try:
                while time.monotonic() < stop_at:
                    counter += 1
                    started = time.monotonic()
                    writer.write(make_request(counter))
                    status, body, retry_after = await asyncio.wait_for(_read_response(reader), timeout=30)
                    if check is not None and not check(status, body):
                        status = 599
                    result.samples.append(Sample(started, time.monotonic() - started, status, retry_after))
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
                result.errors += 1
                await asyncio.sleep(0.01)
            finally:
                writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return result
