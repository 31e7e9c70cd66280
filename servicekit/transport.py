"""A lean HTTP/1.1 keep-alive transport for `httpx.AsyncClient`, for calls inside the cluster.

Why: httpx's default transport (httpcore over anyio) costs ~0.6 ms of CPU per local call, and its
pool checks every idle connection with a `select()` on each request, so the cost grows with the
pool. Here a pooled connection is an asyncio stream: asyncio has already seen a peer's close
(`at_eof()`), so picking one costs nothing. Errors are httpx's own types (ConnectError,
ReadTimeout, PoolTimeout, RemoteProtocolError...), so callers and classifiers cannot tell the
difference. Plain `http://` only; anything else goes to httpx's own transport.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

import httpx

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024


class _StaleConnection(Exception):
    """A reused connection was closed by the peer before any byte of the response."""


def _replayable(request: httpx.Request) -> bool:
    return request.method in ("GET", "HEAD", "OPTIONS", "PUT", "DELETE") or "idempotency-key" in request.headers


@dataclass(eq=False)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = field(default_factory=time.monotonic)

    def usable(self, expiry: float) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing() and time.monotonic() - self.idle_since < expiry

    def close(self) -> None:
        self.writer.close()


async def _timed(awaitable, seconds: float | None, error: type[httpx.TimeoutException], request: httpx.Request):  # type: ignore[no-untyped-def]
    try:
        async with asyncio.timeout(seconds):
            return await awaitable
    except TimeoutError:
        raise error(f"{error.__name__} after {seconds} s", request=request) from None


class PooledTransport(httpx.AsyncBaseTransport):
    """Keeps up to `max_connections` connections per origin; idle ones expire after `keepalive_expiry`."""

    def __init__(self, *, max_connections: int = 100, keepalive_expiry: float = 4.0) -> None:
        # 4 s: under uvicorn's 5 s keep-alive, so we rarely pick a connection the server is closing.
        self.max_connections = max_connections
        self.keepalive_expiry = keepalive_expiry
        self._idle: dict[tuple[str, int], deque[_Connection]] = {}
        self._slots: dict[tuple[str, int], asyncio.Semaphore] = {}
        self._fallback: httpx.AsyncHTTPTransport | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "http":
            if self._fallback is None:
                self._fallback = httpx.AsyncHTTPTransport()
            return await self._fallback.handle_async_request(request)
        timeouts = request.extensions.get("timeout", {})
        origin = (request.url.host, request.url.port or 80)
        slots = self._slots.setdefault(origin, asyncio.Semaphore(self.max_connections))
        await _timed(slots.acquire(), timeouts.get("pool"), httpx.PoolTimeout, request)
        try:
            try:
                return await self._exchange(request, origin, timeouts)
            except _StaleConnection:
                # The server closed a reused connection before answering (its keep-alive ran out
                # as we sent). Nothing was processed-and-answered; an idempotent request goes
                # again, once, on a new connection.
                if not _replayable(request):
                    raise httpx.RemoteProtocolError("peer closed a reused connection", request=request) from None
                return await self._exchange(request, origin, timeouts, fresh=True)
        finally:
            slots.release()

    async def _exchange(
        self, request: httpx.Request, origin: tuple[str, int], timeouts: dict[str, float | None], *, fresh: bool = False
    ) -> httpx.Response:
        body = await request.aread()
        connection = None if fresh else self._take_idle(origin)
        reused = connection is not None
        if connection is None:
            connection = await self._connect(origin, timeouts.get("connect"), request)
        keep = False
        try:
            connection.writer.write(_head(request, len(body)) + body)
            await _timed(connection.writer.drain(), timeouts.get("write"), httpx.WriteTimeout, request)
            status, headers, content, keep = await _timed(
                _read_response(connection.reader, request.method), timeouts.get("read"), httpx.ReadTimeout, request
            )
        except (asyncio.IncompleteReadError, ConnectionError) as error:
            nothing_read = not isinstance(error, asyncio.IncompleteReadError) or not error.partial
            if reused and nothing_read:
                raise _StaleConnection from error
            raise httpx.RemoteProtocolError("peer closed the connection", request=request) from error
        except (asyncio.LimitOverrunError, ValueError) as error:
            raise httpx.RemoteProtocolError(f"malformed response: {error}", request=request) from error
        finally:
            if keep:
                connection.idle_since = time.monotonic()
                self._idle.setdefault(origin, deque()).append(connection)
            else:
                connection.close()
        return httpx.Response(status, headers=headers, content=content, request=request, extensions={"http_version": b"HTTP/1.1"})

    def _take_idle(self, origin: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()  # the most recent is the least likely to have expired
            if connection.usable(self.keepalive_expiry):
                return connection
            connection.close()
        return None

    async def _connect(self, origin: tuple[str, int], seconds: float | None, request: httpx.Request) -> _Connection:
        try:
            reader, writer = await _timed(
                asyncio.open_connection(*origin, limit=MAX_HEADER_BYTES), seconds, httpx.ConnectTimeout, request
            )
        except OSError as error:
            raise httpx.ConnectError(str(error), request=request) from error
        return _Connection(reader, writer)

    async def aclose(self) -> None:
        for idle in self._idle.values():
            while idle:
                idle.pop().close()
        if self._fallback is not None:
            await self._fallback.aclose()


def _head(request: httpx.Request, length: int) -> bytes:
    lines = [b"%s %s HTTP/1.1" % (request.method.encode(), request.url.raw_path)]
    has_length = False
    for name, value in request.headers.raw:
        lowered = name.lower()
        if lowered == b"content-length":
            has_length = True
        elif lowered == b"transfer-encoding":
            continue  # the body was read whole: it goes out with a Content-Length
        lines.append(name + b": " + value)
    if length and not has_length:
        lines.append(b"Content-Length: %d" % length)
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def _read_response(reader: asyncio.StreamReader, method: str) -> tuple[int, list[tuple[bytes, bytes]], bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head[:-4].split(b"\r\n")
    version, status_text = status_line.split(b" ", 1)
    status = int(status_text[:3])
    if not version.startswith(b"HTTP/1.") or not 100 <= status <= 599:
        raise ValueError("not an HTTP/1.x status line")
    headers: list[tuple[bytes, bytes]] = []
    length: int | None = None
    chunked = False
    keep_alive = version == b"HTTP/1.1"
    for line in header_lines:
        name, _, value = line.partition(b":")
        name, value = name.strip(), value.strip()
        headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length":
            length = int(value)
        elif lowered == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif lowered == b"connection":
            keep_alive = b"close" not in value.lower() and (keep_alive or b"keep-alive" in value.lower())
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return status, headers, b"", keep_alive
    if chunked:
        return status, headers, await _read_chunked(reader), keep_alive
    if length is not None:
        if length > MAX_BODY_BYTES:
            raise ValueError("response body too large")
        return status, headers, await reader.readexactly(length), keep_alive
    return status, headers, await reader.read(MAX_BODY_BYTES), False  # delimited by close


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip(), 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                pass
            return b"".join(parts)
        total += size
        if total > MAX_BODY_BYTES:
            raise ValueError("response body too large")
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
