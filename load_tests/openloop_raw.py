"""An open-loop HTTP/1.1 load generator on raw asyncio protocols (uvloop), run as its own process.

Open loop: request n is sent at `start + n / rate` whether or not earlier ones were answered,
as real users arrive; a closed-loop generator (`loadgen.py`) slows down with the server and so
hides overload. A request takes an idle keep-alive connection or opens a new one (up to
`max_connections`); a client timeout closes its connection, as a real client does. Each request
costs the generator a few tens of microseconds, so on 2 cores it is not what limits the server.

`python -m load_tests.openloop_raw URL --rate 2000 --seconds 12 --timeout 5 --after 1` prints one
JSON object (or writes it to `--out`): every request as [sent_at, latency, status] (status 0: timeout, -1: connection
error, -2: not sent, no connection to spare), and the closed-loop 200s in the `--after`
seconds right after the open phase.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

import uvloop

from servicekit.connections import raise_open_files_limit

TIMEOUT, CONNECTION_ERROR, NOT_SENT = 0, -1, -2
Record = Callable[[float, float, int, bytes | None], None]  # sent_at, latency, status, Retry-After


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.sent_at = 0.0
        self.pending: Record | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass

    def send(self, payload: bytes, sent_at: float, record: Record, timeout: float) -> None:
        assert self.transport is not None
        self.sent_at, self.pending = sent_at, record
        self.timer = self.pool.loop.call_at(self.pool.loop.time() + timeout, self._timed_out)
        self.transport.write(payload)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0 or self.pending is None:
            return
        length = 0
        retry_after = None
        for line in bytes(self.buffer[:head_end]).split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
            elif line[:12].lower() == b"retry-after:":
                retry_after = line[12:].strip()
        if len(self.buffer) < head_end + 4 + length:
            return
        status = int(self.buffer[9:12])
        del self.buffer[: head_end + 4 + length]
        self._finish(status, retry_after)
        self.pool.idle.append(self)

    def _finish(self, status: int, retry_after: bytes | None = None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        record, self.pending = self.pending, None
        if record is not None:
            record(self.sent_at, time.monotonic() - self.sent_at, status, retry_after)

    def _timed_out(self) -> None:
        self.timer = None
        self._finish(TIMEOUT)
        if self.transport is not None:
            self.transport.close()  # a client that gave up hangs up

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.open -= 1
        if self in self.pool.idle:
            self.pool.idle.remove(self)
        self._finish(CONNECTION_ERROR)


class Pool:
    """Keep-alive connections to one server, one request at a time each; `submit` never waits."""

    def __init__(self, host: str, port: int, max_connections: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.host, self.port, self.max_connections = host, port, max_connections
        self.idle: list[_Connection] = []
        self.open = 0

    def submit(self, payload: bytes, record: Record, timeout: float) -> None:
        sent_at = time.monotonic()
        if self.idle:
            self.idle.pop().send(payload, sent_at, record, timeout)
        elif self.open >= self.max_connections:
            record(sent_at, 0.0, NOT_SENT, None)
        else:
            self.open += 1
            self.loop.create_task(self._connect_and_send(payload, sent_at, record, timeout))

    async def _connect_and_send(self, payload: bytes, sent_at: float, record: Record, limit: float) -> None:
        try:
            _, connection = await asyncio.wait_for(
                self.loop.create_connection(lambda: _Connection(self), self.host, self.port), limit
            )
        except (OSError, TimeoutError):
            self.open -= 1
            record(sent_at, time.monotonic() - sent_at, CONNECTION_ERROR, None)
            return
        connection.send(payload, sent_at, record, max(0.001, limit - (time.monotonic() - sent_at)))

    def close(self) -> None:
        for connection in list(self.idle):
            if connection.transport is not None:
                connection.transport.close()


def chat_payloads(host: str, users: list[str], text: str = "Hello there!") -> list[bytes]:
    """One ready-to-send `POST /chat/` per user."""
    out = []
    for user in users:
        body = json.dumps({"user_id": user, "text": text}).encode()
        head = f"POST /chat/ HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        out.append(head.encode() + body)
    return out


Sample = tuple[float, float, int]


async def open_loop(
    pool: Pool, payloads: list[bytes], results: list[Sample], *, rate: float, seconds: float, client_timeout: float
) -> int:
    """Send `rate` requests a second for `seconds`; [sent_at, latency, status] arrive in `results`.

    Returns as soon as the last request is sent (answers may still be on their way).
    """
    start = time.monotonic()
    sent = 0

    def record(sent_at: float, latency: float, status: int, _: bytes | None) -> None:
        results.append((round(sent_at - start, 4), round(latency, 5), status))

    total = int(rate * seconds)
    while sent < total:
        due = min(total, int((time.monotonic() - start) * rate) + 1)
        while sent < due:
            pool.submit(payloads[sent % len(payloads)], record, client_timeout)
            sent += 1
        await asyncio.sleep(0.001)
    return total


async def closed_loop(pool: Pool, payloads: list[bytes], *, connections: int, seconds: float) -> list[float]:
    """`connections` requests always outstanding for `seconds`; returns the latencies of the 200s."""
    ok: list[float] = []
    stop_at = time.monotonic() + seconds

    async def worker(n: int) -> None:
        while time.monotonic() < stop_at:
            done = asyncio.get_running_loop().create_future()

            def record(_: float, latency: float, status: int, __: bytes | None, done: asyncio.Future[int] = done) -> None:
                if status == 200:
                    ok.append(latency)
                if not done.done():
                    done.set_result(status)

            pool.submit(payloads[n % len(payloads)], record, 5.0)
            if await done != 200:
                # A refused client backs off a little (a polite one would wait the whole Retry-After;
                # a client that re-sends at once only measures how fast the server can say no).
                await asyncio.sleep(0.05)
            n += connections

    await asyncio.gather(*(worker(n) for n in range(connections)))
    return ok


async def main(args: argparse.Namespace) -> dict[str, object]:
    parts = urlsplit(args.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    payloads = chat_payloads(f"{host}:{port}", [f"{args.user_prefix}{n}" for n in range(args.users)])
    pool = Pool(host, port, args.max_connections)
    out: dict[str, object] = {}
    if not args.rate:
        out["closed_ok"] = await closed_loop(pool, payloads, connections=args.connections, seconds=args.seconds)
        pool.close()
        return out
    results: list[Sample] = []
    total = await open_loop(pool, payloads, results, rate=args.rate, seconds=args.seconds, client_timeout=args.timeout)
    out["stopped_at"] = time.time()  # wall clock, for the caller to compare with its own readings
    after_pool = Pool(host, port, args.connections)
    # The recovery is measured from the moment the load stops, while stragglers are still out.
    after = asyncio.ensure_future(closed_loop(after_pool, payloads, connections=args.connections, seconds=args.after))
    deadline = time.monotonic() + args.timeout + 1
    while len(results) < total and time.monotonic() < deadline:  # noqa: ASYNC110 - polling a plain list
        await asyncio.sleep(0.01)
    out["after_ok"] = len(await after)
    out["requests"] = results
    after_pool.close()
    pool.close()
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, default=0.0, help="open loop at this many requests a second (0: closed loop)")
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--timeout", type=float, default=5.0, help="client timeout, seconds")
    parser.add_argument("--connections", type=int, default=32, help="closed loop: requests kept outstanding")
    parser.add_argument("--max-connections", type=int, default=15_000)
    parser.add_argument("--after", type=float, default=0.0, help="then a closed loop for this many seconds")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--user-prefix", default="bench")
    parser.add_argument("--out", type=Path, help="write the JSON here instead of to stdout")
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise_open_files_limit()
    arguments = parse_args()
    report = json.dumps(uvloop.run(main(arguments)))
    if arguments.out:
        arguments.out.write_text(report)
    else:
        sys.stdout.write(report + "\n")
