"""The pooled transport against a real TCP server that misbehaves on request."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import pytest

from servicekit.transport import PooledTransport


class Server:
    """Answers each request by the path: /ok, /chunked, /close, /hang, /garbage, /truncated, /echo."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        requests_here = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ")[1]
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length) if length else b""
                requests_here += 1
                if path == b"/ok":
                    writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n{"ok": true}')
                elif path == b"/echo":
                    writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                elif path == b"/chunked":
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nX-T: 1\r\n\r\n"
                    )
                elif path == b"/close":
                    writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
                    await writer.drain()
                    writer.close()
                    return
                elif path == b"/no-length":
                    writer.write(b"HTTP/1.0 200 OK\r\n\r\nuntil close")
                    await writer.drain()
                    writer.close()
                    return
                elif path == b"/empty":
                    writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
                elif path == b"/drop" and requests_here > 1:
                    writer.close()  # as a server whose keep-alive ran out just as the request came in
                    return
                elif path == b"/drop":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                elif path == b"/hang":
                    await asyncio.sleep(3600)
                elif path == b"/garbage":
                    writer.write(b"SMTP READY\r\n\r\n")
                elif path == b"/truncated":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
                    await writer.drain()
                    writer.close()
                    return
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def drop_idle_connections(self) -> None:
        for writer in self.writers:
            writer.close()


@pytest.fixture
async def server():
    fake = Server()
    fake.server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    port = fake.server.sockets[0].getsockname()[1]
    async with (
        fake.server,
        httpx.AsyncClient(transport=PooledTransport(max_connections=2), base_url=f"http://127.0.0.1:{port}") as client,
    ):
        yield fake, client


async def test_keep_alive_reuses_one_connection(server):
    fake, client = server
    for _ in range(5):
        response = await client.get("/ok")
        assert response.status_code == 200 and response.json() == {"ok": True}
    assert fake.connections == 1
    assert response.extensions["http_version"] == b"HTTP/1.1"


async def test_bodies_go_out_and_come_back(server):
    _, client = server
    response = await client.post("/echo", json={"a": 1})
    assert response.status_code == 201 and response.json() == {"a": 1}


async def test_chunked_and_close_delimited_bodies(server):
    _, client = server
    assert (await client.get("/chunked")).text == "hello world"
    assert (await client.get("/no-length")).text == "until close"
    assert (await client.get("/empty")).content == b""
    assert (await client.head("/ok")).content == b""


async def test_connection_close_is_respected_and_a_new_one_opened(server):
    fake, client = server
    assert (await client.get("/close")).text == "ok"
    assert (await client.get("/ok")).status_code == 200
    assert fake.connections == 2


async def test_a_connection_the_peer_closed_while_idle_is_not_reused(server):
    fake, client = server
    await client.get("/ok")
    fake.drop_idle_connections()
    await asyncio.sleep(0.05)  # asyncio sees the FIN; no syscall is needed to notice it
    assert (await client.get("/ok")).status_code == 200
    assert fake.connections == 2


async def test_idle_connections_expire(server):
    fake, client = server
    client._transport.keepalive_expiry = 0.0  # type: ignore[attr-defined]
    await client.get("/ok")
    await client.get("/ok")
    assert fake.connections == 2


async def test_timeouts_are_httpx_timeouts(server):
    _, client = server
    with pytest.raises(httpx.ReadTimeout):
        await client.get("/hang", timeout=httpx.Timeout(0.05))


async def test_the_pool_limit_holds_and_times_out(server):
    _, client = server
    hanging = [asyncio.create_task(client.get("/hang", timeout=5)) for _ in range(2)]
    await asyncio.sleep(0.05)
    with pytest.raises(httpx.PoolTimeout):
        await client.get("/ok", timeout=httpx.Timeout(1.0, pool=0.05))
    for task in hanging:
        task.cancel()
    await asyncio.gather(*hanging, return_exceptions=True)
    assert (await client.get("/ok")).status_code == 200, "cancelled requests give their slots back"


async def test_protocol_errors_are_httpx_errors(server):
    _, client = server
    with pytest.raises(httpx.RemoteProtocolError, match="malformed"):
        await client.get("/garbage")
    with pytest.raises(httpx.RemoteProtocolError, match="closed"):
        await client.get("/truncated")


async def test_refused_connections_are_connect_errors():
    with socket_port() as port:
        pass  # the port is free again: nothing listens there
    async with httpx.AsyncClient(transport=PooledTransport()) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/")


async def test_https_goes_to_httpx_own_transport():
    with socket_port() as port:
        pass
    transport = PooledTransport()
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"https://127.0.0.1:{port}/")
    assert transport._fallback is not None


@contextlib.contextmanager
def socket_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def test_a_reused_connection_closed_before_answering_is_replayed_once_for_idempotent_requests(server):
    fake, client = server
    assert (await client.get("/drop")).text == "ok"
    assert (await client.get("/drop")).text == "ok", "the GET went again on a new connection"
    assert fake.connections == 2
    await client.get("/ok")  # leaves a reused connection to be dropped by the POST below
    with pytest.raises(httpx.RemoteProtocolError, match="reused"):
        await client.post("/drop", json={})
    assert (await client.post("/drop", json={}, headers={"Idempotency-Key": "k"})).text == "ok"
