"""Connections and file descriptors: slow clients, idle floods, and running out of descriptors.

uvicorn has no timeout for reading a request: a client that sends its headers one byte at a
time (slowloris), or connects and sends nothing, holds a connection and a descriptor forever;
enough of them exhaust the descriptor limit. Then uvloop (libuv) accepts and at once closes
every new connection, and the stdlib loop stops accepting for a second at a time: every chat
fails, and with uvloop not a line is logged.

`GuardedHttpToolsProtocol` is uvicorn's httptools protocol with two guards, selected with
`uvicorn --http servicekit.connections:GuardedHttpToolsProtocol`:

- a *request read timeout*: a request (headers and body) must arrive whole within
  `SERVICEKIT_REQUEST_READ_TIMEOUT` seconds (default 10) of its first byte, or of the
  connection opening; otherwise the connection gets `408` (or, if it sent nothing, is closed);
- a *connection cap* below the descriptor limit and below 90% of `--limit-concurrency`
  (which uvicorn counts connections against too): past it, idle connections (no request being
  served) are closed to make room, as nginx reuses keep-alive connections; when none is idle,
  the new connection gets `503` and is closed. Either way it is logged and counted, and
  accepting never reaches EMFILE.

It is also admission's front door: when the lifespan state holds a `ShedGate`, a request the
gate refuses gets its `503` written here, once its body has been read and discarded, without an
ASGI scope, task or middleware (servicekit.admission._gate). The gate can ask how long the
request's bytes waited in the kernel before the server read them (`read_wait`, from Linux's
`TCP_INFO`): after a stall, that is seconds, and its client is about to give up.

`raise_open_files_limit` lifts the soft descriptor limit to the hard one at start-up, and
`watch_accept_errors` logs and counts the accept failures the stdlib loop reports.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import resource
import socket
import sys
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, ProcessCollector
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .admission import GATE_KEY, Refusal, ShedGate
from .logging import Throttle, get_logger

STATE_KEY = "connection_events"
_ACCEPT_ERRNOS = {errno.EMFILE: "EMFILE", errno.ENFILE: "ENFILE", errno.ENOBUFS: "ENOBUFS", errno.ENOMEM: "ENOMEM"}
_WARN_EVERY = 5.0  # seconds between repeated warnings of one kind: a flood must not flood the log


class ServerSettings(BaseSettings):
    """The connection guard's settings, shared by both services: SERVICEKIT_REQUEST_READ_TIMEOUT=10, ..."""

    model_config = SettingsConfigDict(env_prefix="SERVICEKIT_", extra="ignore")

    request_read_timeout: float = Field(10.0, gt=0, description="Seconds for a whole request to arrive (408 past it)")
    fd_reserve: int | None = Field(
        None, ge=0, description="Descriptors kept for other than client connections; default 10% of the limit, 128-1024"
    )


@functools.cache
def server_settings() -> ServerSettings:
    """Read once per process; the lifespans call it at start-up, so a bad value fails start-up clearly."""
    return ServerSettings()


def raise_open_files_limit() -> tuple[int, int]:
    """Lift the soft RLIMIT_NOFILE to the hard limit; returns the (soft, hard) now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft, hard  # some platforms cap below RLIM_INFINITY: keep what we have
        soft = hard
    return soft, hard


def connection_cap(soft_limit: int) -> int:
    """Connections allowed before idle ones are closed: the descriptor limit less a reserve.

    The reserve covers what is not a client connection (outbound pools, the outbox, logs):
    10% of the limit, at least 128 and at most 1024, or `SERVICEKIT_FD_RESERVE`.
    """
    configured = server_settings().fd_reserve
    reserve = configured if configured is not None else min(1024, max(128, soft_limit // 10))
    return max(1, soft_limit - reserve)


class ConnectionEvents:
    """Counts and logs what the connection guard and the accept loop do; lives in the lifespan state."""

    def __init__(self, registry: CollectorRegistry, *, prefix: str) -> None:
        self.log = get_logger("connections")
        self.closed = Counter(
            f"{prefix}_connections_closed_total",
            "Connections closed by the server's guards, by reason",
            ["reason"],
            registry=registry,
        )
        self.accept_errors = Counter(
            f"{prefix}_accept_errors_total", "accept() failures reported by the event loop", ["errno"], registry=registry
        )
        ProcessCollector(registry=registry)  # process_open_fds, process_max_fds, RSS, CPU
        self._warnings = Throttle(_WARN_EVERY)

    def on_close(self, reason: str, count: int = 1, **fields: object) -> None:
        """`read_timeout`, `idle_evicted` or `refused` (no descriptor to spare)."""
        self.closed.labels(reason).inc(count)
        if reason != "read_timeout":
            self._warn(f"connections_{reason}", count=count, **fields)

    def on_accept_error(self, name: str) -> None:
        self.accept_errors.labels(name).inc()
        self._warn("accept_failed", errno=name, open_fds=_open_fds())

    def _warn(self, event: str, **fields: object) -> None:
        if self._warnings.allow(event) is not None:
            self.log.warning(event, **fields)


def watch_accept_errors(loop: asyncio.AbstractEventLoop, events: ConnectionEvents) -> Callable[[], None]:
    """Count and log accept() failing for want of descriptors or memory (the stdlib loop reports them).

    Other loop errors go to the handler that was there before. uvloop reports none of these:
    libuv closes the connection it cannot keep; the connection cap keeps us from getting there.
    Returns what puts the previous handler back.
    """
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        if isinstance(error, OSError) and error.errno in _ACCEPT_ERRNOS and "accept" in str(context.get("message", "")):
            events.on_accept_error(_ACCEPT_ERRNOS[error.errno])
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    return lambda: loop.set_exception_handler(previous)


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # pragma: no cover - not Linux
        return -1


def _response(status: bytes, body: bytes, *extra: bytes) -> bytes:
    head = [b"HTTP/1.1 " + status, b"content-type: application/json", b"content-length: %d" % len(body), *extra]
    return b"\r\n".join([*head, b"connection: close", b"", body])


_REQUEST_TIMEOUT = _response(b"408 Request Timeout", b'{"detail":"Request not received in time"}')
_NO_DESCRIPTORS = _response(b"503 Service Unavailable", b'{"detail":"Too many connections"}', b"retry-after: 1")
_STATUS_503 = b"HTTP/1.1 503 Service Unavailable\r\n"
_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None)  # Linux
# struct tcp_info: eight one-byte fields, then u32s; tcpi_last_data_recv is the twelfth (ms).
_LAST_DATA_RECV = slice(52, 56)
_NOT_LOOKED_UP: Any = object()


def _tcp_socket(transport: asyncio.BaseTransport) -> Any:
    """The transport's socket if it is TCP and the kernel reports `TCP_INFO`, else None."""
    sock = transport.get_extra_info("socket")
    if _TCP_INFO is None or sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    return sock


def _since_last_bytes(sock: Any) -> float:
    """Seconds since the connection's latest bytes arrived (the kernel's `tcpi_last_data_recv`).

    Read as a request's headers are parsed, it is how long the request waited in the kernel
    before this process read it: nothing after a prompt read, the length of a stall after one.
    """
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _LAST_DATA_RECV.stop)
    except (OSError, ValueError):  # uvloop's socket raises ValueError once its handle is closed
        return 0.0  # closed meanwhile: no answer will reach it anyway
    return int.from_bytes(info[_LAST_DATA_RECV], sys.byteorder) / 1000


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a request read timeout, a connection cap and admission's door."""

    _read_timeout: float | None = None
    _cap: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cls = type(self)
        if cls._read_timeout is None:  # read once per process, after the lifespan raised the limit
            cls._read_timeout = server_settings().request_read_timeout
            cls._cap = connection_cap(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
            if self.limit_concurrency:
                # uvicorn answers 503 to every request once connections reach --limit-concurrency:
                # evict idle ones first, so idle connections alone never get it there.
                cls._cap = min(cls._cap, max(1, self.limit_concurrency * 9 // 10))
        self._read_timer: asyncio.TimerHandle | None = None
        self._idle = True  # no request between its first byte and its response
        self._reading_headers = False
        self._refusal: tuple[Refusal, bool] | None = None  # refused at the door (keep-alive?); body being discarded
        # The connection's TCP socket (None: not TCP), looked up when the gate first asks how long a
        # request waited in the kernel: most connections, and every one of a service without a
        # gate, never need it.
        self._tcp: Any = _NOT_LOOKED_UP

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        assert self._cap is not None
        if len(self.connections) >= self._cap and not self._make_room():
            self.transport = transport
            self._report("refused", connections=len(self.connections))
            transport.write(_NO_DESCRIPTORS)
            transport.close()
            return
        super().connection_made(transport)
        self._arm_read_timer()

    def _make_room(self) -> bool:
        """Close a tenth of the cap in idle connections; False if none was idle."""
        assert self._cap is not None
        idle = [c for c in self.connections if isinstance(c, GuardedHttpToolsProtocol) and c._idle]
        victims = idle[: max(1, self._cap // 10)]
        for victim in victims:
            victim._disarm_read_timer()
            victim.transport.close()
            self.connections.discard(victim)  # closing completes later; count it gone now
        if victims:
            self._report("idle_evicted", count=len(victims), connections=len(self.connections))
        return bool(victims)

    def on_message_begin(self) -> None:
        # A request pipelined behind one refused at the door is parsed after that refusal armed
        # the keep-alive timer (inside the same feed_data); uvicorn disarms it only on new data.
        self._unset_keepalive_if_required()
        super().on_message_begin()
        self._idle, self._reading_headers = False, True
        self._arm_read_timer()

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        if not self._refused_at_the_door():
            super().on_headers_complete()

    def _refused_at_the_door(self) -> bool:
        gate: ShedGate | None = self.app_state.get(GATE_KEY)
        # Only with nothing ahead of it on this connection (pipelined answers keep their order
        # through uvicorn), a client that reads its answers (the app's path waits for a slow
        # reader) and no 100-continue or upgrade to honour.
        if gate is None or not (self.cycle is None or self.cycle.response_complete) or self.flow.write_paused:
            return False
        if self.expect_100_continue or self.parser.should_upgrade():
            return False
        path = self.root_path.encode() + self.url.partition(b"?")[0]  # a %-encoded one is left to the app
        refusal = gate.sheds(self.parser.get_method(), path, self.headers, self._read_wait)
        if refusal is None:
            return False
        keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()  # as uvicorn
        self._refusal = (refusal, keep_alive)
        return True

    def _read_wait(self) -> float | None:
        if self._tcp is _NOT_LOOKED_UP:
            self._tcp = _tcp_socket(self.transport)
        return None if self._tcp is None else _since_last_bytes(self._tcp)

    def on_body(self, body: bytes) -> None:
        if self._refusal is None:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refusal is not None:
            self._disarm_read_timer()
            self._refuse(*self._refusal)
            return
        super().on_message_complete()
        self._disarm_read_timer()

    def _refuse(self, refusal: Refusal, keep_alive: bool) -> None:
        """Write the gate's 503 as uvicorn would write a response, and carry on as after one."""
        self._refusal = None
        if self.transport.is_closing():
            return  # closed meanwhile (the server shutting down): nobody to answer, nothing to count
        head, body = refusal.answer(self.headers)
        content = [_STATUS_503]
        for name, value in self.server_state.default_headers:  # date, server: as on every answer
            content += (name, b": ", value, b"\r\n")
        content += (head, b"\r\n" if keep_alive else b"connection: close\r\n\r\n", body)
        self.transport.write(b"".join(content))
        if not keep_alive:
            self.transport.close()
        self.on_response_complete()  # keep-alive timer, pipelined requests, reading resumed

    def on_response_complete(self) -> None:
        self._idle = True
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_read_timer()
        super().connection_lost(exc)

    def _arm_read_timer(self) -> None:
        if self._read_timer is None and self._read_timeout:
            self._read_timer = self.loop.call_later(self._read_timeout, self._read_timed_out)

    def _disarm_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        if not self._idle and (self._reading_headers or self._refusal is not None or not self.cycle.response_started):
            self.transport.write(_REQUEST_TIMEOUT)  # a request began: say why it ends
        self._report("read_timeout")
        self.transport.close()

    def _report(self, reason: str, count: int = 1, **fields: object) -> None:
        events = self.app_state.get(STATE_KEY)
        if isinstance(events, ConnectionEvents):
            events.on_close(reason, count, **fields)
