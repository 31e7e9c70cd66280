"""An HTTP/1.1 transport for `httpx.AsyncClient` on aiohttp's connection pool and C parser.

Why: httpx's own transport (httpcore) costs 0.5-1.3 ms of client CPU per pooled call here, and
a hand-written HTTP/1.1 client got the less common but valid shapes wrong (a 1xx before the
answer, a 408 on an idle connection, bodies delimited by the close). aiohttp's connector and
llhttp parser handle those and are well kept; this module only adapts them to httpx: httpx's
request in, httpx's response and exception types out, httpx's per-call timeouts honoured.

What it adds to aiohttp, each because the callers depend on it (see docs/http-client.md):
- exception types that tell whether the request may have reached the server (only a failure to
  connect is a `ConnectError`/`ConnectTimeout`; a peer that drops a sent request is a
  `RemoteProtocolError`), since a POST without an Idempotency-Key is retried only after the former;
- the pool wait bounded by the `pool` timeout (`PoolTimeout`), apart from the `connect` one;
- the `write` timeout, which aiohttp has no setting for;
- a pooled connection that received bytes while idle (a `408` before the server closes) is dead,
  never reused: its stale answer would go to the next request;
- a POST carrying an Idempotency-Key is replayed once, like aiohttp's idempotent methods, when
  the server closed the connection before answering (its keep-alive ran out as we sent);
- URLs go out exactly as httpx encoded them (yarl would turn `/analytics/%2E%2E` into `/`);
- response bodies are read whole, up to `max_body_bytes`.
"""

from __future__ import annotations

import asyncio
import warnings
import weakref
from typing import Any

import aiohttp
import httpx
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ClientRequest
from aiohttp.connector import Connection
from aiohttp.tracing import Trace
from yarl import URL

__all__ = ["AiohttpTransport"]

MAX_BODY_BYTES = 16 * 1024 * 1024
# aiohttp replays requests with these methods once itself when a connection breaks before the
# response (RFC 9112 9.3.1): the same set as its own `IDEMPOTENT_METHODS`.
AIOHTTP_REPLAYS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# aiohttp waits for the peer (a drain) only once a request has written more than 64 KiB: a
# smaller one (head and body) is handed to the socket at once, whatever the peer does, so only
# larger bodies need a write timeout.
UNBLOCKABLE_BODY_BYTES = 48 * 1024
HTTP_VERSIONS: dict[tuple[int, int] | None, bytes] = {(1, 1): b"HTTP/1.1", (1, 0): b"HTTP/1.0"}


class _IdleCheckingConnector(aiohttp.TCPConnector):
    """Never hands out a pooled connection that got bytes, an error or a close while idle.

    aiohttp reuses any idle connection whose socket is still open. A server that answers `408`
    and then closes leaves that answer parsed and queued on the connection for a moment; reused,
    it would be read as the next request's response. httpcore treats "readable while idle" as
    dead; `should_close` is aiohttp's own verdict on the connection, checked here.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._used: weakref.WeakSet[ResponseHandler] = weakref.WeakSet()

    async def connect(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's signature
    ) -> Connection:
        while True:
            connection = await super().connect(req, traces, timeout)
            protocol = connection.protocol
            if protocol is None or protocol not in self._used:
                # A new connection: whatever it holds already (a server's greeting or refusal)
                # is this request's to meet, and must not make us reconnect forever.
                if protocol is not None:
                    self._used.add(protocol)
                return connection
            if not protocol.should_close:
                return connection
            connection.close()  # from the pool, and dead: try the next one


class AiohttpTransport(httpx.AsyncBaseTransport):
    """At most `max_connections` requests in flight; idle connections expire after `keepalive_expiry`.

    The 4 s default sits under uvicorn's 5 s keep-alive, so we rarely pick a connection the
    server is closing. The aiohttp session is opened on the first request, on the running loop.
    """

    def __init__(
        self, *, max_connections: int = 100, keepalive_expiry: float = 4.0, max_body_bytes: int = MAX_BODY_BYTES
    ) -> None:
        self.max_connections = max_connections
        self.keepalive_expiry = keepalive_expiry
        self.max_body_bytes = max_body_bytes
        self._slots = asyncio.Semaphore(max_connections)
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[float | None, float | None], aiohttp.ClientTimeout] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        if self._slots.locked():
            try:
                async with asyncio.timeout(timeouts.get("pool")):
                    await self._slots.acquire()
            except TimeoutError:
                raise httpx.PoolTimeout(f"no connection free within {timeouts.get('pool')} s", request=request) from None
        else:
            await self._slots.acquire()  # a free slot: taken without suspending
        try:
            response, content = await self._exchange(request, timeouts)
        except aiohttp.ClientError as error:
            raise _httpx_error(error, request) from error
        finally:
            self._slots.release()
        return httpx.Response(
            response.status,
            headers=response.raw_headers,
            content=content,
            request=request,
            extensions={"http_version": HTTP_VERSIONS.get(response.version, b"HTTP/1.1")},
        )

    async def _exchange(self, request: httpx.Request, timeouts: dict[str, float | None]) -> tuple[aiohttp.ClientResponse, bytes]:
        headers = request.headers.multi_items()
        try:
            body = request.content
        except httpx.RequestNotRead:
            body = await request.aread()
            # Read whole, the body goes out with a Content-Length, not chunked.
            headers = [(name, value) for name, value in headers if name != "transfer-encoding"]
        try:
            response = await self._send(request, headers, body, timeouts)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as error:
            if isinstance(error, aiohttp.ClientConnectorError) or not _replayable_by_us(request):
                raise
            # The server closed the connection before any answer. The key makes a second
            # delivery safe, so it goes once more, as aiohttp does for GET and PUT.
            response = await self._send(request, headers, body, timeouts)
        try:
            return response, await self._read_body(response)
        finally:
            response.release()  # at EOF the connection is back in the pool already; otherwise closed

    async def _send(
        self, request: httpx.Request, headers: list[tuple[str, str]], body: bytes, timeouts: dict[str, float | None]
    ) -> aiohttp.ClientResponse:
        sending = (self._session or self._open()).request(
            request.method,
            URL(str(request.url), encoded=True),
            headers=headers,
            data=_payload(body),
            allow_redirects=False,
            timeout=self._client_timeout(timeouts.get("connect"), timeouts.get("read")),
        )
        try:
            if len(body) <= UNBLOCKABLE_BODY_BYTES:
                return await sending
            # aiohttp has no write timeout, and starts its read timer only once the body is written:
            # a peer that stops reading would hold a large body forever. Bound the whole send.
            limit = _total(timeouts.get("connect"), timeouts.get("write"), timeouts.get("read"))
            try:
                async with asyncio.timeout(limit):
                    return await sending
            except TimeoutError:
                raise httpx.WriteTimeout(
                    f"request not sent and answered within connect + write + read = {limit} s", request=request
                ) from None
        except aiohttp.ClientError:
            raise
        except ValueError as error:
            # aiohttp's header writer refuses CR/LF (header injection) before writing a byte.
            raise httpx.LocalProtocolError(str(error), request=request) from error

    def _client_timeout(self, connect: float | None, read: float | None) -> aiohttp.ClientTimeout:
        # The same few limits come back on almost every call: build each once.
        timeout = self._timeouts.get((connect, read))
        if timeout is None:
            if len(self._timeouts) >= 256:  # clipped to a deadline's remainder, limits can vary without end
                self._timeouts.clear()
            timeout = self._timeouts[connect, read] = aiohttp.ClientTimeout(connect=connect, sock_connect=connect, sock_read=read)
        return timeout

    async def _read_body(self, response: aiohttp.ClientResponse) -> bytes:
        length = response.content_length
        if length is not None and length <= self.max_body_bytes:
            return await response.read()
        if length is not None:
            raise aiohttp.ClientPayloadError(f"response body of {length} bytes is over {self.max_body_bytes}")
        parts: list[bytes] = []  # chunked or delimited by the close: count as it comes
        size = 0
        while chunk := await response.content.read(1 << 16):
            size += len(chunk)
            if size > self.max_body_bytes:
                raise aiohttp.ClientPayloadError(f"response body is over {self.max_body_bytes} bytes")
            parts.append(chunk)
        return b"".join(parts)

    def _open(self) -> aiohttp.ClientSession:
        connector = _IdleCheckingConnector(limit=0, keepalive_timeout=self.keepalive_expiry)  # our slots bound it
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),  # httpx keeps the cookies
            auto_decompress=False,  # httpx decodes Content-Encoding
            trust_env=False,  # httpx routes proxies from the environment before we are called
            timeout=aiohttp.ClientTimeout(),  # no session-wide limits: each request brings its own
        )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def _payload(body: bytes) -> bytes | aiohttp.BytesPayload | None:
    if len(body) <= 1 << 20:
        return body or None
    with warnings.catch_warnings():
        # aiohttp suggests streaming bodies over 1 MiB; ours are already whole in memory, and
        # the write is bounded by the write timeout.
        warnings.simplefilter("ignore", ResourceWarning)
        return aiohttp.BytesPayload(body)


def _replayable_by_us(request: httpx.Request) -> bool:
    return request.method not in AIOHTTP_REPLAYS and "idempotency-key" in request.headers


def _total(*parts: float | None) -> float | None:
    return None if any(part is None for part in parts) else sum(part for part in parts if part is not None)


def _httpx_error(error: aiohttp.ClientError, request: httpx.Request) -> httpx.TransportError:
    """The httpx exception httpcore would raise for the same failure.

    Only a failure to open the connection says the request never left; everything after
    (a disconnect, a reset, a malformed or truncated answer) may have reached the server.
    """
    message = str(error) or type(error).__name__
    kind: type[httpx.TransportError]
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        kind = httpx.ConnectTimeout
    elif isinstance(error, aiohttp.ServerTimeoutError):
        kind = httpx.ReadTimeout  # sock_read: no byte for `read` seconds
    elif isinstance(error, aiohttp.ClientConnectorError):
        kind = httpx.ConnectError  # refused, unreachable, DNS, TLS handshake
    elif isinstance(error, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
        kind = httpx.RemoteProtocolError  # closed before the answer, truncated or malformed answer
    elif isinstance(error, aiohttp.ClientConnectionResetError):
        kind = httpx.WriteError  # aiohttp raises it when writing to a closed connection
    elif isinstance(error, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        kind = httpx.UnsupportedProtocol
    elif isinstance(error, aiohttp.ClientConnectionError):
        kind = httpx.NetworkError  # a reset or similar after the connection was open
    else:
        kind = httpx.TransportError
    return kind(message, request=request)
