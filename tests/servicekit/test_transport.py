"""The aiohttp-based transport against real sockets that speak each wire case byte for byte.

Each answer carries the id of the request it answers (`/ok/7` answers `7`), so a response that
belongs to another request cannot pass for the right one.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from servicekit.transport import AiohttpTransport
from tests.fakes.wire import WireRequest, WireServer

MEGABYTE = 1024 * 1024


def ok(body: bytes, *extra: bytes) -> bytes:
    return b"\r\n".join([b"HTTP/1.1 200 OK", b"Content-Length: %d" % len(body), *extra, b"", body])


async def answer(request: WireRequest, writer: asyncio.StreamWriter) -> bool:
    """Answers by the first path segment; the last one is the request's id."""
    kind, _, ident = request.target.strip("/").partition("/")
    echo = ident.encode()
    if kind == "ok":
        writer.write(ok(echo))
    elif kind == "echo":
        framing = b"length=%s te=%s" % (
            request.headers.get("content-length", "-").encode(),
            request.headers.get("transfer-encoding", "-").encode(),
        )
        writer.write(ok(request.body, b"X-Framing: " + framing))
    elif kind == "early-hints":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
        await writer.drain()
        writer.write(ok(echo))
    elif kind == "then-408":
        # The answer, and right behind it the 408 a server sends before closing an idle
        # connection; the socket stays open a while, as a server's lingering close does.
        writer.write(ok(echo) + b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(3600)  # closed when the test ends
    elif kind == "close-delimited":
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
        for offset in range(0, MEGABYTE, 64 * 1024):
            writer.write(bytes([offset // (64 * 1024)]) * (64 * 1024))
            await writer.drain()
        return False
    elif kind == "http10":
        writer.write(b"HTTP/1.0 200 OK\r\n\r\n" + echo)
        return False
    elif kind == "chunked":
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
            b"5\r\nhello\r\n1;ext=1\r\n \r\n%x\r\n%s\r\n0\r\nX-Checksum: abc\r\nX-More: 1\r\n\r\n" % (len(echo), echo)
        )
    elif kind == "chunk-without-crlf":
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n")
    elif kind == "two-lengths":
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc")
    elif kind == "length-and-chunked":
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    elif kind == "negative-length":
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nabc")
    elif kind == "gzip":
        writer.write(ok(gzip.compress(echo), b"Content-Encoding: gzip"))
    elif kind == "drop-when-reused" and request.number > 1:
        return False  # a server whose keep-alive ran out just as the request came in
    elif kind == "drop-when-reused":
        writer.write(ok(echo))
    elif kind == "drop":
        return False
    elif kind == "reset":
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # close = RST
        writer.transport.abort()
        return False
    elif kind == "hang":
        await asyncio.sleep(3600)
    elif kind == "garbage":
        writer.write(b"SMTP READY\r\n\r\n")
    elif kind == "truncated":
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
        return False
    elif kind == "big":
        writer.write(ok(b"x" * 2048))
    elif kind == "big-chunked":
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n" + b"x" * 2048 + b"\r\n0\r\n\r\n")
    else:
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    return True


@pytest.fixture
async def wire() -> AsyncIterator[tuple[WireServer, httpx.AsyncClient]]:
    server = WireServer(answer)
    async with (
        server.running(),
        httpx.AsyncClient(transport=AiohttpTransport(max_connections=2), base_url=server.url, timeout=5) as client,
    ):
        yield server, client


async def test_keep_alive_reuses_one_connection(wire):
    server, client = wire
    for n in range(5):
        response = await client.get(f"/ok/{n}")
        assert (response.status_code, response.text) == (200, str(n))
    assert server.connections == 1
    assert response.extensions["http_version"] == b"HTTP/1.1"


async def test_1xx_answers_before_the_final_one_are_skipped_and_the_connection_stays_in_step(wire):
    server, client = wire
    assert (await client.get("/early-hints/1")).text == "1"
    assert (await client.get("/ok/2")).text == "2", "the next request reads its own answer, not the 200 of the first"
    assert (await client.get("/early-hints/3")).text == "3"
    assert server.connections == 1


async def test_a_408_waiting_on_an_idle_connection_is_never_read_as_the_next_answer(wire):
    server, client = wire
    assert (await client.get("/then-408/1")).text == "1"
    response = await client.get("/ok/2")
    assert (response.status_code, response.text) == (200, "2")
    assert server.connections == 2, "the connection holding the 408 was dropped, not reused"


async def test_a_server_that_answers_408_on_every_new_connection_is_met_not_reconnected_to_forever():
    connections = 0

    async def refuse(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.write(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, httpx.AsyncClient(transport=AiohttpTransport()) as client:
        try:
            async with asyncio.timeout(5):
                response = await client.get(f"http://127.0.0.1:{port}/")
            assert response.status_code == 408
        except httpx.TransportError:
            pass  # the close won the race with the answer: an error of httpx's, also fine
    assert connections <= 2, "at most aiohttp's one replay of a GET"


async def test_a_connection_the_peer_closed_while_idle_is_not_reused(wire):
    server, client = wire
    assert (await client.get("/http10/1")).text == "1"
    assert (await client.get("/ok/2")).text == "2"
    assert server.connections == 2


async def test_a_close_delimited_body_of_1_mb_arrives_whole(wire):
    _, client = wire
    response = await client.get("/close-delimited/1")
    expected = b"".join(bytes([n]) * (64 * 1024) for n in range(16))
    assert len(response.content) == MEGABYTE and response.content == expected
    assert (await client.get("/ok/2")).text == "2"


async def test_chunked_bodies_with_extensions_and_trailers(wire):
    server, client = wire
    assert (await client.get("/chunked/1")).text == "hello 1"
    assert (await client.get("/ok/2")).text == "2", "the trailers were read to the end of the message"
    assert server.connections == 1


@pytest.mark.parametrize("kind", ["chunk-without-crlf", "two-lengths", "length-and-chunked", "negative-length", "garbage"])
async def test_malformed_or_conflicting_framing_is_refused(wire, kind):
    _, client = wire
    with pytest.raises(httpx.RemoteProtocolError):
        await client.get(f"/{kind}/1")
    assert (await client.get("/ok/2")).text == "2", "the broken connection was not reused"


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nX-Injected: 1", "a\rb"])
async def test_header_values_with_cr_or_lf_are_refused_before_sending(wire, value):
    server, client = wire
    with pytest.raises(httpx.LocalProtocolError):
        await client.get("/ok/1", headers={"X-Request-ID": value})
    assert server.bytes_received == 0 and server.requests == []
    assert (await client.get("/ok/2")).text == "2"


async def test_request_bodies_go_out_with_a_content_length(wire):
    _, client = wire
    response = await client.post("/echo/1", json={"a": 1})
    assert response.json() == {"a": 1}
    assert response.headers["x-framing"] == f"length={len(response.content)} te=-"

    async def streamed() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b"def"

    response = await client.post("/echo/2", content=streamed())
    assert response.text == "abcdef" and response.headers["x-framing"] == "length=6 te=-"


async def test_urls_go_out_exactly_as_httpx_encoded_them(wire):
    server, client = wire
    await client.get("/missing/%2E%2E")
    await client.get("/missing/a%2Fb")
    assert [r.target for r in server.requests] == ["/missing/%2E%2E", "/missing/a%2Fb"]


async def test_content_encoding_is_decoded_by_httpx(wire):
    _, client = wire
    assert (await client.get("/gzip/hello")).text == "hello"


async def test_bodies_over_the_cap_are_refused():
    server = WireServer(answer)
    transport = AiohttpTransport(max_body_bytes=1024)
    async with server.running(), httpx.AsyncClient(transport=transport, base_url=server.url) as client:
        for kind in ("big", "big-chunked"):
            with pytest.raises(httpx.RemoteProtocolError, match="over 1024"):
                await client.get(f"/{kind}/1")
        assert (await client.get("/ok/2")).text == "2"


async def test_a_truncated_body_is_an_error_not_a_short_answer(wire):
    _, client = wire
    with pytest.raises(httpx.RemoteProtocolError):
        await client.get("/truncated/1")


async def test_a_reused_connection_closed_before_answering_is_replayed_once_for_idempotent_requests(wire):
    server, client = wire
    assert (await client.get("/drop-when-reused/1")).text == "1"
    assert (await client.get("/drop-when-reused/2")).text == "2", "the GET went again on a new connection"
    assert server.connections == 2
    await client.get("/ok/3")  # leaves a reused connection for the POST below to be dropped on
    with pytest.raises(httpx.RemoteProtocolError):
        await client.post("/drop-when-reused/4", json={})
    assert [r.target for r in server.requests].count("/drop-when-reused/4") == 1, "a POST without a key is never resent"
    await client.get("/ok/5")
    response = await client.post("/drop-when-reused/6", json={}, headers={"Idempotency-Key": "k"})
    assert response.text == "6"
    assert [r.target for r in server.requests].count("/drop-when-reused/6") == 2


async def test_failures_after_the_request_was_sent_never_look_like_connect_failures(wire):
    _, client = wire
    with pytest.raises(httpx.RemoteProtocolError) as dropped:
        await client.post("/drop/1", json={})
    with pytest.raises(httpx.TransportError) as reset:
        await client.post("/reset/2", json={})
    for error in (dropped.value, reset.value):
        assert not isinstance(error, httpx.ConnectError | httpx.ConnectTimeout), error


async def test_refused_connections_are_connect_errors():
    port = _unused_port()
    async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
        for scheme in ("http", "https"):
            with pytest.raises(httpx.ConnectError):
                await client.get(f"{scheme}://127.0.0.1:{port}/")


async def test_read_timeout(wire):
    _, client = wire
    with pytest.raises(httpx.ReadTimeout):
        await client.get("/hang/1", timeout=httpx.Timeout(5, read=0.05))


async def test_connect_timeout_is_its_own_limit_not_the_pool_one():
    with _full_listener() as port:
        async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
            started = asyncio.get_running_loop().time()
            with pytest.raises(httpx.ConnectTimeout):
                await client.get(f"http://127.0.0.1:{port}/", timeout=httpx.Timeout(5, connect=0.2, pool=0.01))
            assert asyncio.get_running_loop().time() - started >= 0.2


async def test_the_pool_limit_holds_and_times_out(wire):
    server, client = wire
    hanging = [asyncio.create_task(client.get(f"/hang/{n}")) for n in range(2)]
    async with asyncio.timeout(5):
        while len(server.requests) < 2:  # both slots are taken once the server holds both requests
            await asyncio.sleep(0.005)
    with pytest.raises(httpx.PoolTimeout):
        await client.get("/ok/1", timeout=httpx.Timeout(1.0, pool=0.05))
    for task in hanging:
        task.cancel()
    await asyncio.gather(*hanging, return_exceptions=True)
    assert (await client.get("/ok/2")).status_code == 200, "cancelled requests give their slots back"


async def test_a_body_the_peer_never_reads_ends_in_a_write_timeout():
    stop = asyncio.Event()

    async def never_read(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await stop.wait()
        finally:
            writer.close()

    server = await asyncio.start_server(never_read, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, httpx.AsyncClient(transport=AiohttpTransport()) as client:
        with pytest.raises(httpx.WriteTimeout):
            await client.post(f"http://127.0.0.1:{port}/", content=b"x" * (64 * MEGABYTE), timeout=0.1)
        stop.set()


async def test_idle_connections_expire():
    server = WireServer(answer)
    transport = AiohttpTransport(keepalive_expiry=0.05)
    async with server.running(), httpx.AsyncClient(transport=transport, base_url=server.url) as client:
        await client.get("/ok/1")
        await asyncio.sleep(0.1)  # past the expiry: time passing is the condition itself
        await client.get("/ok/2")
        assert server.connections == 2


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _full_listener() -> Iterator[int]:
    """A listening socket whose accept queue is full, so a new connect hangs (its SYNs are dropped)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = int(listener.getsockname()[1])
        fillers = [socket.socket() for _ in range(4)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
            yield port
        finally:
            for filler in fillers:
                filler.close()
