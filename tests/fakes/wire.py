"""HTTP/1.1 servers on real sockets that answer with exactly the bytes a test chooses."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass


@dataclass
class WireRequest:
    method: str
    target: str
    headers: dict[str, str]  # names lower-cased
    raw_head: bytes
    body: bytes
    number: int  # 1 for the first request on its connection


# Writes the answer (or nothing); returns whether the connection stays open for another request.
Handler = Callable[[WireRequest, asyncio.StreamWriter], Awaitable[bool]]
# Called once a connection has been idle `idle_after` seconds; returns whether to keep waiting.
IdleHandler = Callable[[asyncio.StreamWriter], Awaitable[bool]]


class WireServer:
    """Reads plain HTTP/1.1 requests (Content-Length bodies) and hands each to `handler`."""

    def __init__(self, handler: Handler, *, on_idle: IdleHandler | None = None, idle_after: float = 0.05) -> None:
        self.handler = handler
        self.on_idle = on_idle
        self.idle_after = idle_after
        self.connections = 0
        self.requests: list[WireRequest] = []
        self.bytes_received = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._tasks.add(task := asyncio.current_task())  # type: ignore[arg-type]
        number = 0
        try:
            while True:
                head = await self._next_head(reader, writer)
                if head is None:
                    return
                self.bytes_received += len(head)
                number += 1
                request = _parse(head, number)
                length = int(request.headers.get("content-length", "0"))
                request.body = await reader.readexactly(length) if length else b""
                self.bytes_received += length
                self.requests.append(request)
                if not await self.handler(request, writer):
                    return
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            pass  # the server is shutting down; ending quietly keeps asyncio from logging the cancel
        finally:
            writer.close()
            self._tasks.discard(task)  # type: ignore[arg-type]

    async def _next_head(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes | None:
        while True:
            try:
                async with asyncio.timeout(self.idle_after if self.on_idle else None):
                    return await reader.readuntil(b"\r\n\r\n")
            except TimeoutError:
                assert self.on_idle is not None
                if not await self.on_idle(writer):
                    return None
            except asyncio.IncompleteReadError as eof:
                self.bytes_received += len(eof.partial)
                return None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[WireServer]:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        async with self._server:
            try:
                yield self
            finally:
                for task in list(self._tasks):
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)


def _parse(head: bytes, number: int) -> WireRequest:
    request_line, *lines = head[:-4].decode("latin-1").split("\r\n")
    method, target, _ = request_line.split(" ", 2)
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return WireRequest(method, target, headers, head, b"", number)
