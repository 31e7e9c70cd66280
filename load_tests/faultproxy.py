"""A userland TCP fault proxy for tests, chaos runs and benchmarks.

    uv run python -m load_tests.faultproxy --target 127.0.0.1:5432 --port 15432 --control 15433

Put it between a client and a real server, then change what it does at any time:

| mode | what the client sees |
| --- | --- |
| `pass` | the server, as if connected directly |
| `reset F` | a request (a chunk the client sends) meets, with probability F, a TCP reset instead of the server |
| `cut F` | an answer (a chunk the server sends) is, with probability F, cut by a TCP reset after its first byte |
| `latency S` | every chunk the server sends arrives S seconds late |
| `blackhole` | connections open, but nothing goes through in either direction and nothing is answered |
| `close` | every connection, open or new, is closed at once |
| `refuse` | connection refused, as if the server died: the port stops listening, open connections are aborted |

Any mode after `refuse` listens again on the same port: the moment the "server" is back is exact,
with none of a restarted server's start-up time.

`FaultProxy` runs in the caller's event loop; `ProxyProcess` runs it as a child process and is
driven through its control port (one command a line, answered `ok`), so a test or benchmark that
drives load from its own process does not share a CPU core's GIL with the proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass

from .processes import ROOT, free_port

MODES = ("pass", "reset", "cut", "latency", "blackhole", "close", "refuse")


@dataclass
class Fault:
    mode: str = "pass"
    value: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Fault:
        mode, _, value = text.strip().partition(" ")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
        return cls(mode, float(value) if value else 0.0)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0: the peer gets a TCP RST, not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _write_unless_closed(writer: asyncio.StreamWriter, chunk: bytes) -> None:
    if not writer.is_closing():
        writer.write(chunk)


class FaultProxy:
    """Forwards 127.0.0.1:`port` to `target`, misbehaving as `fault` says."""

    def __init__(self, target: tuple[str, int], *, port: int = 0, seed: int | None = None) -> None:
        self.target = target
        self.port = port
        self.fault = Fault()
        self.resets = 0
        self.connections = 0
        self._rng = random.Random(seed)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[object]] = set()

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening, close every connection and wait for their handlers to end."""
        server = self._server
        self._refuse()
        if self._handlers:
            await asyncio.wait(self._handlers)
        if server is not None:
            await server.wait_closed()

    def set(self, fault: Fault) -> None:
        """Change the mode. After `refuse`, use `apply` to listen again."""
        self.fault = fault
        if fault.mode == "close":
            self._close_all()
        elif fault.mode == "refuse":
            self._refuse()

    async def apply(self, fault: Fault) -> None:
        """`set`, and listen again on the same port when leaving `refuse`."""
        self.set(fault)
        if fault.mode != "refuse" and self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    def _refuse(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._open):
            writer.transport.abort()

    def _close_all(self) -> None:
        for writer in list(self._open):
            writer.close()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        handler.add_done_callback(self._handlers.discard)
        self.connections += 1
        if self.fault.mode == "close":
            client_writer.close()
            return
        self._open.add(client_writer)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(client_writer)
            self._open.discard(client_writer)
            return
        self._open.add(upstream_writer)
        try:
            await asyncio.gather(
                self._pump(client_reader, upstream_writer, client_writer, upstream=True),
                self._pump(upstream_reader, client_writer, upstream_writer, upstream=False),
            )
        finally:
            for writer in (client_writer, upstream_writer):
                self._open.discard(writer)
                writer.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, other: asyncio.StreamWriter, *, upstream: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        last_due = 0.0  # delayed chunks keep their order, and each is late by the delay, not by the sum
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while chunk := await reader.read(65536):
                fault = self.fault
                if fault.mode == "blackhole":
                    continue  # swallowed: the peer waits for an answer that never comes
                if fault.mode == "close":
                    break
                if upstream and fault.mode == "reset" and self._rng.random() < fault.value:
                    self.resets += 1
                    _reset(other)  # the client sees a reset; the server never sees the request
                    writer.transport.abort()
                    return
                if not upstream and fault.mode == "cut" and self._rng.random() < fault.value:
                    # The server did the work; the client gets a broken answer, which no client
                    # may mistake for a connection closed before answering (and quietly resend).
                    self.resets += 1
                    writer.write(chunk[:1])
                    await writer.drain()
                    _reset(writer)
                    other.transport.abort()
                    return
                if not upstream and fault.mode == "latency":
                    last_due = max(last_due, loop.time() + fault.value)
                    loop.call_at(last_due, _write_unless_closed, writer, chunk)
                    continue
                writer.write(chunk)
                await writer.drain()
        if last_due > loop.time():
            await asyncio.sleep(last_due - loop.time())
        writer.close()

    async def serve_control(self, port: int) -> asyncio.Server:
        """Accept `MODE [VALUE]` lines (and `stats`) on 127.0.0.1:`port`."""

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while line := (await reader.readline()).decode().strip():
                if line == "stats":
                    writer.write(f"connections={self.connections} resets={self.resets}\n".encode())
                else:
                    try:
                        await self.apply(Fault.parse(line))
                        writer.write(b"ok\n")
                    except ValueError as error:
                        writer.write(f"error {error}\n".encode())
                await writer.drain()
            writer.close()

        return await asyncio.start_server(handle, "127.0.0.1", port)


class ProxyProcess:
    """A `FaultProxy` in a child process, driven over its control port."""

    def __init__(self, target: tuple[str, int], *, seed: int | None = None) -> None:
        self.target = target
        self.port = free_port()
        self.control_port = free_port()
        self.seed = seed
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: float = 10.0) -> ProxyProcess:
        command = [sys.executable, "-m", "load_tests.faultproxy", "--target", f"{self.target[0]}:{self.target[1]}"]
        command += ["--port", str(self.port), "--control", str(self.control_port)]
        if self.seed is not None:
            command += ["--seed", str(self.seed)]
        self.process = subprocess.Popen(command, cwd=ROOT)
        limit = time.monotonic() + wait
        while True:
            try:
                self.command("stats")
                return self
            except OSError:
                if time.monotonic() > limit or self.process.poll() is not None:
                    raise
                time.sleep(0.02)

    def command(self, line: str) -> str:
        with socket.create_connection(("127.0.0.1", self.control_port), timeout=5) as sock:
            sock.sendall(line.encode() + b"\n")
            return sock.makefile().readline().strip()

    def set(self, mode: str, value: float | None = None) -> None:
        answer = self.command(mode if value is None else f"{mode} {value}")
        if answer != "ok":
            raise ValueError(answer)

    def stats(self) -> dict[str, int]:
        return {k: int(v) for k, v in (part.split("=") for part in self.command("stats").split())}

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def __enter__(self) -> ProxyProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


async def _main(args: argparse.Namespace) -> None:
    host, _, port = args.target.rpartition(":")
    proxy = await FaultProxy((host, int(port)), port=args.port, seed=args.seed).start()
    if args.mode:
        await proxy.apply(Fault.parse(args.mode))
    control = await proxy.serve_control(args.control) if args.control else None
    try:
        await asyncio.Event().wait()
    finally:
        if control is not None:
            control.close()
        await proxy.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="host:port of the real server")
    parser.add_argument("--port", type=int, default=0, help="where to listen on 127.0.0.1")
    parser.add_argument("--control", type=int, default=0, help="control port (off when 0)")
    parser.add_argument("--mode", default="", help="initial mode, e.g. 'reset 0.3'")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))


if __name__ == "__main__":
    main()
