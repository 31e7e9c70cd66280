"""The fault proxy does what each mode promises, in process and as a child process."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from load_tests.faultproxy import Fault, FaultProxy, ProxyProcess


@pytest.fixture
async def proxy() -> AsyncIterator[FaultProxy]:
    handlers: set[asyncio.Task[object]] = set()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        with contextlib.suppress(ConnectionError):  # the proxy aborts its side on a reset
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    proxy = await FaultProxy(("127.0.0.1", server.sockets[0].getsockname()[1]), seed=1).start()
    yield proxy
    await proxy.stop()  # closes the upstream side too, so every echo handler ends
    if handlers:
        await asyncio.wait(handlers)
    server.close()
    await server.wait_closed()


async def _round_trip(proxy: FaultProxy, payload: bytes = b"ping", timeout: float = 2.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(payload)
        await writer.drain()
        async with asyncio.timeout(timeout):
            return await reader.read(1024)
    finally:
        writer.close()


async def test_pass_forwards_both_ways(proxy):
    assert await _round_trip(proxy) == b"ping"


async def test_reset_answers_a_share_of_requests_with_a_tcp_reset(proxy):
    proxy.set(Fault("reset", 1.0))
    with pytest.raises(ConnectionResetError):
        await _round_trip(proxy)
    proxy.set(Fault("reset", 0.3))
    outcomes = []
    for _ in range(200):
        try:
            outcomes.append(await _round_trip(proxy) == b"ping")
        except ConnectionResetError:
            outcomes.append(False)
    assert 0.15 < outcomes.count(False) / len(outcomes) < 0.45


async def test_cut_breaks_an_answer_after_its_first_byte(proxy):
    proxy.set(Fault("cut", 1.0))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"ping")
    assert await reader.read(1) == b"p"
    with pytest.raises(ConnectionResetError):
        await reader.read(1024)
    writer.close()


async def test_latency_delays_every_chunk_of_an_answer_by_the_same_time(proxy):
    proxy.set(Fault("latency", 0.2))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    started = time.monotonic()
    for part in (b"a", b"b", b"c"):  # three chunks: the answer must not take three delays
        writer.write(part)
        await writer.drain()
    received = b""
    async with asyncio.timeout(2):
        while len(received) < 3:
            received += await reader.read(1024)
    elapsed = time.monotonic() - started
    writer.close()
    assert received == b"abc"
    assert 0.2 <= elapsed < 0.2 * 2, elapsed


async def test_blackhole_answers_nothing(proxy):
    proxy.set(Fault("blackhole"))
    with pytest.raises(TimeoutError):
        await _round_trip(proxy, timeout=0.2)


async def test_close_ends_connections_open_and_new(proxy):
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"x")
    assert await reader.read(1) == b"x"
    proxy.set(Fault("close"))
    assert await reader.read(1) == b"", "the open connection is closed"
    writer.close()
    # Closed with our byte unread, the kernel may answer with a reset: a refusal all the same.
    with contextlib.suppress(ConnectionResetError):
        assert await _round_trip(proxy) == b""


async def test_refuse_stops_listening_until_another_mode_listens_again_on_the_same_port(proxy):
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"x")
    assert await reader.read(1) == b"x"
    port = proxy.port
    await proxy.apply(Fault("refuse"))
    with contextlib.suppress(ConnectionResetError):
        assert await reader.read(1) == b"", "the open connection is aborted"
    writer.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    await proxy.apply(Fault("pass"))
    assert proxy.port == port
    assert await _round_trip(proxy) == b"ping"


def test_unknown_modes_are_refused():
    with pytest.raises(ValueError):
        Fault.parse("explode 1")


def test_the_proxy_process_is_driven_through_its_control_port():
    import socket

    with socket.create_server(("127.0.0.1", 0)) as server, ProxyProcess(server.getsockname()[:2]) as proxy:
        proxy.set("refuse")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        proxy.set("reset", 0.5)
        with pytest.raises(ValueError):
            proxy.set("explode")
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5):
            pass
        deadline = time.monotonic() + 5
        while proxy.stats()["connections"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
