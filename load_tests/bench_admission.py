"""What admission costs a request, in process: `uv run python -m load_tests.bench_admission`.

Prints microseconds per call for the limiter alone (admit + release; queue + hand-over), for
the whole chat app in process (uvloop, no HTTP parsing): a request shed with 503, against a
`GET /healthz` that passes admission untouched, and for whole requests fed as bytes to the
server's protocol (`GuardedHttpToolsProtocol`, HTTP parsing included, no socket): a `POST /chat/`
refused at the door, the same refused by the middleware (the gate taken out of the state), and
`GET /healthz`. Rounds alternate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import uvicorn
import uvloop
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from uvicorn.server import ServerState

from chat_service.core.config import Settings
from chat_service.main import create_app
from servicekit.admission import GATE_KEY, AdmissionPolicy, Limiter
from servicekit.connections import GuardedHttpToolsProtocol

BODY = b'{"user_id": "bench1", "text": "Hello there!"}'


async def limiter_costs(calls: int) -> dict[str, float]:
    limiter = Limiter(AdmissionPolicy(initial_limit=64, max_limit=64))
    started = time.perf_counter()
    for _ in range(calls):
        permit = limiter.try_acquire()
        assert permit is not None
        permit.release(completed=True)
    admit = (time.perf_counter() - started) / calls
    held = [limiter.try_acquire() for _ in range(limiter.limit)]
    started = time.perf_counter()
    for n in range(calls // 10):
        place = limiter.enqueue()  # full: queue, then hand the next free slot over
        held[n % len(held)].release(completed=False)  # type: ignore[union-attr]
        held[n % len(held)] = await limiter.wait(place)
    queue = (time.perf_counter() - started) / (calls // 10)
    return {"admit_release_us": round(admit * 1e6, 2), "queue_handover_us": round(queue * 1e6, 2)}


def _scope(state: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"chat"), (b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
        "state": dict(state),
    }


def _chat_app() -> FastAPI:
    """Chat as shipped, offline, with no admission queue (every excess request is refused at once)."""
    work = Path(tempfile.mkdtemp(prefix="bench-admission-"))
    settings = Settings(
        outbox_path=str(work / "outbox.sqlite3"),
        llm_provider="offline",
        log_level="WARNING",
        log_format="json",
        analytics_url="http://127.0.0.1:9",
        admission={"queue_timeout": 0},  # type: ignore[arg-type]
    )
    return create_app(settings)


async def app_costs(requests: int, rounds: int) -> dict[str, float]:
    app = _chat_app()
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    timings: dict[str, list[float]] = {"shed_503_us": [], "healthz_us": []}
    async with LifespanManager(app) as manager:
        state: dict[str, Any] = manager._state  # the lifespan's state, as uvicorn hands it to requests
        limiter: Limiter = state["admission"]
        held = [limiter.try_acquire() for _ in range(limiter.limit)]  # every slot taken: all is shed
        for _ in range(rounds):
            for name, method, path in (("shed_503_us", "POST", "/chat/"), ("healthz_us", "GET", "/healthz")):
                started = time.perf_counter()
                for _ in range(requests):
                    await manager.app(_scope(state, method, path), receive, send)
                timings[name].append((time.perf_counter() - started) / requests * 1e6)
        for permit in held:
            permit.release(completed=False)  # type: ignore[union-attr]
    assert set(statuses) == {200, 503}, set(statuses)
    return {name: round(statistics.median(values), 1) for name, values in timings.items()}


class _Transport:
    """Just enough of a socket transport for uvicorn's protocol: it keeps count of what is written."""

    def __init__(self) -> None:
        self.answers = 0
        self.answered: asyncio.Event = asyncio.Event()

    def write(self, data: bytes) -> None:
        if data.startswith(b"HTTP/1.1 "):
            self.answers += 1
            self.answered.set()

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def protocol_costs(requests: int, rounds: int) -> dict[str, float]:
    """Microseconds per request fed as bytes to the protocol, answered; the app's tasks run on this loop."""
    app = _chat_app()
    chat = b"POST /chat/ HTTP/1.1\r\nHost: chat\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(BODY)
    requests_by_name = {
        "door_503_us": (True, chat + BODY),
        "app_503_us": (False, chat + BODY),
        "healthz_http_us": (True, b"GET /healthz HTTP/1.1\r\nHost: chat\r\n\r\n"),
    }
    timings: dict[str, list[float]] = {name: [] for name in requests_by_name}
    async with LifespanManager(app) as manager:
        state: dict[str, Any] = manager._state
        without_gate = {**state, GATE_KEY: None}
        config = uvicorn.Config(app, http=GuardedHttpToolsProtocol, lifespan="off", log_level="warning", limit_concurrency=4096)
        server_state = ServerState()
        server_state.default_headers = [(b"date", b"Fri, 27 Nov 2026 08:00:00 GMT"), (b"server", b"uvicorn")]
        limiter: Limiter = state["admission"]
        held = [limiter.try_acquire() for _ in range(limiter.limit)]  # every slot taken: all is shed
        for _ in range(rounds):
            for name, (gate, request) in requests_by_name.items():
                protocol = GuardedHttpToolsProtocol(config, server_state, state if gate else without_gate)
                transport = _Transport()
                protocol.connection_made(transport)  # type: ignore[arg-type]
                started = time.perf_counter()
                for n in range(1, requests + 1):
                    protocol.data_received(request)  # one keep-alive connection, one request at a time
                    while transport.answers < n:
                        transport.answered.clear()
                        await transport.answered.wait()
                timings[name].append((time.perf_counter() - started) / requests * 1e6)
                protocol.connection_lost(None)
        for permit in held:
            permit.release(completed=False)  # type: ignore[union-attr]
    return {name: round(statistics.median(values), 1) for name, values in timings.items()}


async def main(args: argparse.Namespace) -> None:
    print(json.dumps(await limiter_costs(args.calls)), flush=True)
    print(json.dumps(await app_costs(args.requests, args.rounds)), flush=True)
    print(json.dumps(await protocol_costs(args.requests, args.rounds)), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--requests", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=5)
    uvloop.run(main(parser.parse_args()))
