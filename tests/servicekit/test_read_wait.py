"""How long a request waited in the kernel, as the connection guard reads it (`TCP_INFO`), on both loops."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from servicekit.connections import _since_last_bytes, _tcp_socket

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TCP_INFO is Linux's")

Runner = Callable[[Coroutine[Any, Any, None]], None]
LOOPS = [pytest.param(asyncio.run, id="asyncio"), pytest.param(uvloop.run, id="uvloop")]


class _Recorder(asyncio.Protocol):
    """Reads, on each arrival, how long the bytes waited, and once more when the connection is gone."""

    def __init__(self, waits: list[float | None], closed: list[float]) -> None:
        self.waits, self.closed = waits, closed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.sock = _tcp_socket(transport)

    def data_received(self, data: bytes) -> None:
        self.waits.append(None if self.sock is None else _since_last_bytes(self.sock))
        if data == b"bye":
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.append(_since_last_bytes(self.sock))  # the socket is closing or gone: no error either way


@pytest.mark.parametrize("run", LOOPS)
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_bytes_left_in_the_kernel_read_as_old_and_prompt_ones_as_new(run: Runner, family: socket.AddressFamily) -> None:
    waits: list[float | None] = []
    closed: list[float] = []

    async def main() -> None:
        host = "127.0.0.1" if family == socket.AF_INET else "::1"
        server = await asyncio.get_running_loop().create_server(lambda: _Recorder(waits, closed), host, 0, family=family)
        with socket.create_connection(server.sockets[0].getsockname()[:2]) as client:
            await asyncio.sleep(0.05)
            client.send(b"late")
            time.sleep(0.6)  # noqa: ASYNC251 - the loop is blocked: the bytes wait in the kernel
            await asyncio.sleep(0.05)
            client.send(b"prompt")
            await asyncio.sleep(0.05)
            client.send(b"bye")
            await asyncio.sleep(0.05)
        server.close()

    run(main())
    late, prompt, _ = waits
    assert late is not None and prompt is not None
    assert 0.55 <= late < 3  # it waited 0.6 s; the kernel counts in jiffies (1-10 ms)
    assert prompt < 0.3
    assert len(closed) == 1 and closed[0] < 0.3  # read as the connection goes: no error, nothing old


@pytest.mark.parametrize("run", LOOPS)
def test_a_unix_socket_has_no_kernel_wait_to_read(run: Runner, tmp_path: Path) -> None:
    sockets: list[object] = []

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sockets.append(_tcp_socket(transport))

    async def main() -> None:
        path = str(tmp_path / "s")
        server = await asyncio.get_running_loop().create_unix_server(Probe, path)
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)
            await asyncio.sleep(0.05)
        server.close()

    run(main())
    assert sockets == [None]
