"""Refusing at the door, over real sockets: uvicorn with the connection guard, in this process.

The limiter's slot is held by the test itself, so what is full and when it frees is exact. An
ASGI wrapper outermost records every request that reached the app: a request refused at the
door never does.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import uvicorn
from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp, Receive, Scope, Send

from servicekit.admission import AdmissionMetrics, AdmissionMiddleware, AdmissionPolicy, Limiter, ShedGate
from servicekit.admission._middleware import OVERLOADED
from servicekit.connections import GuardedHttpToolsProtocol
from servicekit.metrics import HttpMetrics
from servicekit.middleware import RequestContextMiddleware

ROUTES = (("POST", "/work"),)
SHED_BODY = json.dumps(OVERLOADED).encode()
MAX_BODY = 1024
MAX_READ_WAIT = 0.5


@dataclass
class Server:
    port: int
    limiter: Limiter
    registry: CollectorRegistry
    reached_app: list[str] = field(default_factory=list)  # "METHOD path" of each request the app saw
    release: asyncio.Event = field(default_factory=asyncio.Event)
    max_read_wait: float | None = None

    def sample(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def shed_counts(self) -> tuple[float, float]:
        """(admission's queue_full count, the request metrics' 503s for the work route)."""
        return (
            self.sample("test_admission_shed_total", reason="queue_full"),
            self.sample("http_requests_total", method="POST", route="/work", status="503"),
        )


class _Recorder:
    def __init__(self, app: ASGIApp, seen: list[str]) -> None:
        self.app, self.seen = app, seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.seen.append(f"{scope['method']} {scope['path']}")
        await self.app(scope, receive, send)


def build(server: Server) -> ASGIApp:
    http_metrics = HttpMetrics(server.registry)
    admission_metrics = AdmissionMetrics(server.registry, prefix="test")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, object]]:
        gate = ShedGate(
            server.limiter,
            routes=ROUTES,
            on_event=admission_metrics.on_event,
            metrics=http_metrics,
            max_body_bytes=MAX_BODY,
            max_read_wait=server.max_read_wait,
        )
        yield {"admission": server.limiter, "admission_gate": gate}

    app = FastAPI(lifespan=lifespan)

    @app.post("/work")
    async def work(request: Request) -> dict[str, str]:
        body = await request.json()
        if body.get("hold"):
            await server.release.wait()
        return {"done": str(body.get("n", ""))}

    @app.post("/other")
    async def other() -> dict[str, str]:
        return {"other": "ok"}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/slow")
    async def slow() -> dict[str, str]:
        await server.release.wait()
        return {"slow": "done"}

    app.add_middleware(AdmissionMiddleware, routes=ROUTES, on_event=admission_metrics.on_event)
    app.add_middleware(RequestContextMiddleware, metrics=http_metrics, max_body_bytes=MAX_BODY)
    return _Recorder(app, server.reached_app)


@pytest.fixture
async def server(request: pytest.FixtureRequest) -> AsyncIterator[Server]:
    """A limit of one and no queue: whoever holds the slot makes every other work request shed.

    Parametrize indirectly with a dict of `keep_alive` (seconds; uvicorn's default, 5, otherwise)
    and `max_read_wait` (the gate's; off otherwise: a noisy machine must not make a test's
    prompt request read late).
    """
    policy = AdmissionPolicy(min_limit=1, initial_limit=1, max_limit=1, queue_timeout=0)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    options = getattr(request, "param", {})
    state = Server(sock.getsockname()[1], Limiter(policy), CollectorRegistry(), max_read_wait=options.get("max_read_wait"))
    keep_alive = options.get("keep_alive", 5)
    config = uvicorn.Config(
        build(state), http=GuardedHttpToolsProtocol, lifespan="on", log_level="warning", timeout_keep_alive=keep_alive
    )
    uv = uvicorn.Server(config)
    task = asyncio.create_task(uv.serve(sockets=[sock]))
    while not uv.started:
        await asyncio.sleep(0.005)
    yield state
    state.release.set()
    uv.should_exit = True
    await task
    state.limiter.close()
    sock.close()


def post(body: dict[str, object], *extra: str, path: str = "/work") -> bytes:
    raw = json.dumps(body).encode()
    head = [f"POST {path} HTTP/1.1", "Host: test", "Content-Type: application/json", f"Content-Length: {len(raw)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + raw


GET_HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    async with asyncio.timeout(5):
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = {}
        for line in head[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Answer(int(head[0].split()[1]), headers, body)


@asynccontextmanager
async def connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()


async def test_a_full_limiter_is_answered_at_the_door_as_the_middleware_answers_and_counted_alike(server):
    held = server.limiter.try_acquire()
    assert held is not None
    async with connection(server.port) as (reader, writer):
        writer.write(post({"n": 1}, "X-Request-ID: client-id-1"))
        at_door = await read_answer(reader)
        assert server.reached_app == []  # no ASGI request at all
        assert server.shed_counts() == (1, 1)
        writer.write(post({"n": 2}, "Origin: http://browser.example"))  # left to the app (its CORS headers)
        in_app = await read_answer(reader)
        assert server.reached_app == ["POST /work"]
        assert server.shed_counts() == (2, 2)
    for answer in (at_door, in_app):
        assert answer.status == 503
        assert answer.body == SHED_BODY
        assert answer.headers["retry-after"] == "1"
        assert answer.headers["content-type"] == "application/json"
        assert answer.headers["x-request-id"] and "date" in answer.headers
        assert "connection" not in answer.headers  # keep-alive, as uvicorn answers HTTP/1.1
    assert at_door.headers["x-request-id"] == "client-id-1"
    assert server.sample("http_request_duration_seconds_count", method="POST", route="/work") == 2
    held.release(completed=False)


async def test_health_and_other_routes_are_never_refused_at_the_door(server):
    held = server.limiter.try_acquire()
    async with connection(server.port) as (reader, writer):
        writer.write(GET_HEALTHZ)
        assert (await read_answer(reader)).status == 200
        writer.write(post({}, path="/other"))
        assert (await read_answer(reader)).status == 200
        writer.write(post({}, path="/wor%6B"))  # %-encoded: the app decodes it and its middleware sheds
        assert (await read_answer(reader)).status == 503
    assert server.reached_app == ["GET /healthz", "POST /other", "POST /work"]
    assert server.shed_counts() == (1, 1)
    async with connection(server.port) as (reader, writer):
        writer.write(post({"text": "x" * MAX_BODY}))  # too large is 413, whatever the load
        assert (await read_answer(reader)).status == 413
    assert held is not None
    held.release(completed=False)


async def test_a_keep_alive_connection_refused_at_the_door_is_served_once_capacity_frees(server):
    held = server.limiter.try_acquire()
    assert held is not None
    async with connection(server.port) as (reader, writer):
        writer.write(post({"n": 1}))
        assert (await read_answer(reader)).status == 503
        held.release(completed=False)
        for n in (2, 3):  # the same connection, twice more
            writer.write(post({"n": n}))
            served = await read_answer(reader)
            assert (served.status, json.loads(served.body)) == (200, {"done": str(n)})
    assert server.reached_app == ["POST /work", "POST /work"]
    assert server.shed_counts() == (1, 1)


async def test_a_chunked_body_and_a_query_string_are_refused_at_the_door_and_the_connection_goes_on(server):
    held = server.limiter.try_acquire()
    chunked = b"POST /work?x=1 HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    async with connection(server.port) as (reader, writer):
        headers_end = chunked.index(b"\r\n\r\n") + 4
        writer.write(chunked[:headers_end])  # the body arrives later: the answer waits for all of it
        await asyncio.sleep(0.05)
        writer.write(chunked[headers_end:])
        assert (await read_answer(reader)).status == 503
        writer.write(GET_HEALTHZ)
        assert (await read_answer(reader)).status == 200
    assert server.reached_app == ["GET /healthz"] and server.shed_counts() == (1, 1)
    assert held is not None
    held.release(completed=False)


async def test_pipelined_requests_are_answered_in_order(server):
    held = server.limiter.try_acquire()
    assert held is not None
    async with connection(server.port) as (reader, writer):
        # One write: the first is refused at the door; the third arrives behind a request still
        # being answered, so it waits in uvicorn's pipeline and the middleware refuses it.
        writer.write(post({"n": 1}) + GET_HEALTHZ + post({"n": 3}) + GET_HEALTHZ)
        answers = [await read_answer(reader) for _ in range(4)]
        assert [a.status for a in answers] == [503, 200, 503, 200]
        assert answers[0].body == answers[2].body == SHED_BODY
        assert server.reached_app == ["GET /healthz", "POST /work", "GET /healthz"]
        held.release(completed=False)

        # A request behind one that is running waits its turn in uvicorn's pipeline, and the
        # middleware decides on it then: its answer may not overtake the one ahead.
        writer.write(post({"n": 1, "hold": True}) + post({"n": 2}))
        await asyncio.sleep(0.1)
        assert server.limiter.in_flight == 1  # the first runs and holds the slot; the second waits
        server.release.set()
        answers = [await read_answer(reader) for _ in range(2)]
        assert [(a.status, json.loads(a.body)) for a in answers] == [(200, {"done": "1"}), (200, {"done": "2"})]
    assert server.shed_counts() == (2, 2)


async def test_requests_read_together_with_one_slot_free_are_refused_at_the_door_but_one(server):
    # Read in one pass of the loop, both are asked about before either runs and takes the slot:
    # without counting the first, the door would let both in and the middleware refuse the second.
    async with connection(server.port) as (reader_1, writer_1), connection(server.port) as (reader_2, writer_2):
        for reader, writer in ((reader_1, writer_1), (reader_2, writer_2)):
            writer.write(GET_HEALTHZ)  # both accepted and read by the server before the test proper
            assert (await read_answer(reader)).status == 200
        writer_1.write(post({"n": 1, "hold": True}))
        writer_2.write(post({"n": 2}))
        assert (await read_answer(reader_2)).status == 503
        assert server.reached_app == ["GET /healthz", "GET /healthz", "POST /work"] and server.shed_counts() == (1, 1)
        assert server.limiter.in_flight == 1  # the first holds the slot
        server.release.set()
        assert (await read_answer(reader_1)).status == 200


@pytest.mark.parametrize("server", [{"max_read_wait": MAX_READ_WAIT}], indirect=True)
async def test_a_request_that_waited_in_the_kernel_past_max_read_wait_is_refused_at_the_door(server):
    # The server shares this loop: blocking it leaves the requests in the kernel, as a stall does.
    async with connection(server.port) as (reader, writer), connection(server.port) as (browser_reader, browser):
        for each_reader, each_writer in ((reader, writer), (browser_reader, browser)):
            each_writer.write(GET_HEALTHZ)  # both connections accepted and read before the test proper
            assert (await read_answer(each_reader)).status == 200
        writer.write(post({"n": 1}))  # the transport sends at once
        browser.write(post({"n": 3}, "Origin: http://browser.example"))  # left to the app, late or not
        time.sleep(MAX_READ_WAIT + 0.3)  # noqa: ASYNC251 - blocking the loop is the point
        late, from_browser = await read_answer(reader), await read_answer(browser_reader)
        writer.write(post({"n": 2}))
        prompt = await read_answer(reader)
    assert (late.status, late.body, late.headers["retry-after"]) == (503, SHED_BODY, "1")
    assert (from_browser.status, json.loads(from_browser.body)) == (200, {"done": "3"})
    assert (prompt.status, json.loads(prompt.body)) == (200, {"done": "2"})
    assert sorted(server.reached_app).count("POST /work") == 2  # the late one never reached the app
    assert server.sample("test_admission_shed_total", reason="read_late") == 1
    assert server.shed_counts() == (0, 1)  # not a queue_full; a 503 for the route all the same
    assert not server.limiter._gradient._held_back  # a late read says nothing about the limit


@pytest.mark.parametrize("server", [{"max_read_wait": MAX_READ_WAIT}], indirect=True)
async def test_a_late_request_refused_for_a_full_limit_still_tells_the_limiter_it_was_read_late(server, monkeypatch):
    # While the door refuses everything as queue_full, a backlog in the kernel must still lower the limit.
    late_reads: list[None] = []
    monkeypatch.setattr(server.limiter, "read_late", lambda: late_reads.append(None))
    held = server.limiter.try_acquire()
    assert held is not None
    async with connection(server.port) as (reader, writer):
        writer.write(GET_HEALTHZ)
        assert (await read_answer(reader)).status == 200
        writer.write(post({"n": 1}))
        time.sleep(MAX_READ_WAIT + 0.3)  # noqa: ASYNC251 - blocking the loop is the point
        assert (await read_answer(reader)).status == 503
        writer.write(post({"n": 2}))  # prompt, and refused: the limit is still full
        assert (await read_answer(reader)).status == 503
    assert server.shed_counts() == (2, 2) and len(late_reads) == 1
    held.release(completed=False)


async def test_a_request_let_through_that_never_asks_for_a_slot_leaves_no_slot_taken(server):
    async with connection(server.port) as (reader, writer):
        writer.write(post({"text": "x" * MAX_BODY}))  # let through to the app, which answers 413 before admission
        assert (await read_answer(reader)).status == 413
        writer.write(post({"n": 2}))
        served = await read_answer(reader)
        assert (served.status, json.loads(served.body)) == (200, {"done": "2"})
    assert server.shed_counts() == (0, 0)


@pytest.mark.parametrize("server", [{"keep_alive": 0.3}], indirect=True)
async def test_a_request_pipelined_behind_a_refusal_is_not_cut_off_by_the_keep_alive_timeout(server):
    held = server.limiter.try_acquire()
    assert held is not None
    async with connection(server.port) as (reader, writer):
        # One write: the refusal is answered while the parser reads on, so the request behind it
        # must not inherit the keep-alive timer meant for an idle connection.
        writer.write(post({"n": 1}) + b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n")
        assert (await read_answer(reader)).status == 503
        await asyncio.sleep(0.8)  # well past the 0.3 s keep-alive timeout, the slow request still running
        server.release.set()
        async with asyncio.timeout(5):
            answer = await read_answer(reader)
        assert (answer.status, json.loads(answer.body)) == (200, {"slow": "done"})
    held.release(completed=False)


@pytest.mark.parametrize(
    ("version", "extra"), [("HTTP/1.1", ("Connection: close",)), ("HTTP/1.0", ())], ids=["connection-close", "http-1.0"]
)
async def test_a_client_that_does_not_keep_alive_gets_its_503_and_the_connection_closes(server, version, extra):
    held = server.limiter.try_acquire()
    async with connection(server.port) as (reader, writer):
        writer.write(post({"n": 1}, *extra).replace(b"HTTP/1.1", version.encode(), 1))
        answer = await read_answer(reader)
        assert answer.status == 503 and answer.headers["connection"] == "close"
        async with asyncio.timeout(5):
            assert await reader.read() == b""  # closed by the server
    assert server.reached_app == [] and server.shed_counts() == (1, 1)
    assert held is not None
    held.release(completed=False)


async def test_a_refusal_at_the_door_tells_the_limiter_its_limit_holds_back_demand(server):
    # The door never asks for a slot: without being told, the limit would never count as binding
    # once every request is refused there, and a limit without a baseline would never grow.
    held = server.limiter.try_acquire()
    assert held is not None and not server.limiter._gradient._held_back
    async with connection(server.port) as (reader, writer):
        writer.write(post({"n": 1}))
        assert (await read_answer(reader)).status == 503
    assert server.reached_app == [] and server.limiter._gradient._held_back
    held.release(completed=False)
