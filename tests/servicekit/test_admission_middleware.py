"""The admission middleware, driven as ASGI: what it sheds, never sheds, drops and cancels."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.background import BackgroundTask
from starlette.types import Message

from servicekit.admission import (
    CLIENT_CLOSED_REQUEST,
    AdmissionMiddleware,
    AdmissionPolicy,
    Limiter,
    Permit,
    commit_reply,
)

BODY = b'{"text": "hi"}'


class Client:
    """One request's side of the connection: the body, then silence until `leave()`."""

    def __init__(self, chunks: tuple[bytes, ...] = (BODY,), gap: float = 0.0) -> None:
        self.chunks = list(chunks)
        self.gap = gap
        self.left = asyncio.Event()
        self.told_gone = False  # the server has read the disconnect
        self.sent: list[Message] = []

    def leave(self) -> None:
        self.left.set()

    async def receive(self) -> Message:
        if self.chunks:
            if self.gap:
                await asyncio.sleep(self.gap)
            chunk = self.chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(self.chunks)}
        await self.left.wait()
        self.told_gone = True
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.leave()  # as uvicorn: once the response is complete, receive() reports a disconnect

    @property
    def status(self) -> int | None:
        return next((m["status"] for m in self.sent if m["type"] == "http.response.start"), None)

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(next(m["headers"] for m in self.sent if m["type"] == "http.response.start"))

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


class Harness:
    def __init__(self, policy: AdmissionPolicy) -> None:
        self.limiter = Limiter(policy)
        self.events: list[str] = []
        self.ran: list[str] = []
        self.recorded: list[str] = []
        self.release_work = asyncio.Event()
        self.work_cancelled = asyncio.Event()
        app = FastAPI()

        @app.post("/work")
        async def work(request: Request) -> dict[str, str]:
            payload = await request.json()
            self.ran.append(payload["text"])
            try:
                await self.release_work.wait()  # the model run
            except asyncio.CancelledError:
                self.work_cancelled.set()
                raise
            commit_reply(request)
            self.recorded.append(payload["text"])  # the outbox append
            return {"reply": payload["text"]}

        @app.post("/commit-early")
        async def commit_early(request: Request) -> dict[str, str]:
            commit_reply(request)
            self.ran.append("early")
            await self.release_work.wait()
            self.recorded.append("early")
            return {"reply": "early"}

        @app.post("/stubborn")
        async def stubborn(request: Request) -> dict[str, str]:
            self.ran.append("stubborn")
            with contextlib.suppress(asyncio.CancelledError):  # code that swallows cancellation
                await self.release_work.wait()
            commit_reply(request)
            self.recorded.append("stubborn")
            return {"reply": "stubborn"}

        @app.post("/record-after-reply")
        async def record_after_reply(request: Request) -> JSONResponse:
            async def record() -> None:
                await asyncio.sleep(0.05)  # the reply is out; the server reports its end as a disconnect
                commit_reply(request)
                self.recorded.append("after-reply")

            return JSONResponse({"reply": "whole"}, background=BackgroundTask(record))

        @app.get("/healthz")
        async def healthz() -> dict[str, str]:
            return {"status": "ok"}

        # As in the services: inside Starlette's error middleware, so a route's ClientGone reaches it.
        app.add_middleware(
            AdmissionMiddleware,
            routes=[("POST", "/work"), ("POST", "/commit-early"), ("POST", "/stubborn"), ("POST", "/record-after-reply")],
            retry_after=2,
            on_event=self.events.append,
        )
        self.app = app

    def scope(self, method: str, path: str) -> dict[str, object]:
        return {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 2),
            "state": {"admission": self.limiter},
        }

    def start(self, client: Client, path: str = "/work", method: str = "POST") -> asyncio.Task[None]:
        return asyncio.create_task(self.app(self.scope(method, path), client.receive, client.send))

    def hold(self, count: int) -> list[Permit]:
        permits = [self.limiter.try_acquire() for _ in range(count)]
        assert all(permits)
        return permits  # type: ignore[return-value]


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


@asynccontextmanager
async def harness(**policy: object) -> AsyncIterator[Harness]:
    h = Harness(AdmissionPolicy(**{"min_limit": 1, "initial_limit": 2, **policy}))  # type: ignore[arg-type]
    yield h
    h.release_work.set()


async def test_an_admitted_request_runs_and_gives_its_slot_back():
    async with harness() as h:
        client = Client()
        task = h.start(client)
        await until(lambda: h.ran == ["hi"])
        assert h.limiter.in_flight == 1
        h.release_work.set()
        await task
        assert client.status == 200 and json.loads(client.body) == {"reply": "hi"}
        assert h.recorded == ["hi"] and h.limiter.in_flight == 0 and h.events == []


async def test_the_excess_gets_503_with_retry_after_before_any_work():
    async with harness(queue_timeout=0) as h:
        held = h.hold(2)
        client = Client()
        await h.start(client)
        assert client.status == 503
        assert client.headers[b"retry-after"] == b"2"
        assert json.loads(client.body)["detail"].startswith("The service is overloaded")
        assert h.ran == [] and h.events == ["queue_full"]
        for permit in held:
            permit.release(completed=False)


async def test_health_and_other_routes_are_never_shed():
    async with harness(queue_timeout=0) as h:
        held = h.hold(2)
        client = Client(chunks=(b"",))
        await h.start(client, "/healthz", "GET")
        assert client.status == 200
        unknown = Client()
        await h.start(unknown, "/work/elsewhere")  # not a work route: the router's 404, not a 503
        assert unknown.status == 404 and h.events == []
        for permit in held:
            permit.release(completed=False)


async def test_a_request_that_waits_past_its_deadline_is_not_run():
    async with harness(queue_timeout=0.05) as h:
        held = h.hold(2)
        client = Client()
        await h.start(client)
        assert client.status == 503 and h.events == ["queue_timeout"] and h.ran == []
        for permit in held:
            permit.release(completed=False)


async def test_a_client_that_leaves_while_queued_is_never_run_and_frees_its_place():
    async with harness(queue_timeout=5) as h:
        held = h.hold(2)
        client = Client()
        task = h.start(client)
        await until(lambda: h.limiter.queued == 1)
        client.leave()
        await task
        assert h.events == ["client_gone"] and h.ran == [] and client.status == CLIENT_CLOSED_REQUEST
        for permit in held:
            permit.release(completed=False)
        assert h.limiter.in_flight == 0  # the slot was not handed to the departed request


async def test_a_client_that_leaves_while_running_cancels_the_run_and_nothing_is_recorded():
    async with harness() as h:
        client = Client()
        task = h.start(client)
        await until(lambda: h.ran == ["hi"])
        client.leave()
        await task  # returns normally: the cancellation was ours and is absorbed
        assert h.work_cancelled.is_set() and h.recorded == []
        assert h.events == ["cancelled"] and h.limiter.in_flight == 0


async def test_a_committed_reply_is_finished_even_if_the_client_leaves():
    async with harness() as h:
        client = Client()
        task = h.start(client, "/commit-early")
        await until(lambda: h.ran == ["early"])  # committed
        client.leave()
        await until(lambda: client.told_gone)
        h.release_work.set()
        await task
        assert h.recorded == ["early"] and client.status == 200 and h.events == []


async def test_commit_after_the_client_left_records_nothing_even_if_the_cancellation_was_swallowed():
    async with harness() as h:
        client = Client()
        task = h.start(client, "/stubborn")
        await until(lambda: h.ran == ["stubborn"])
        client.leave()
        await task
        assert h.recorded == [] and h.events == ["cancelled"] and client.status == CLIENT_CLOSED_REQUEST
        assert not task.cancelling()


async def test_a_slow_body_is_read_before_a_slot_is_taken():
    async with harness() as h:
        client = Client(chunks=(b'{"text":', b' "hi"}'), gap=0.05)
        task = h.start(client)
        await asyncio.sleep(0.02)
        assert h.limiter.in_flight == 0  # still uploading: holds no slot
        h.release_work.set()
        await task
        assert client.status == 200 and h.recorded == ["hi"]


async def test_a_shutdown_cancellation_is_not_swallowed():
    async with harness() as h:
        client = Client()
        task = h.start(client)
        await until(lambda: h.ran == ["hi"])
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert h.limiter.in_flight == 0 and h.events == []


async def test_without_a_limiter_in_the_state_admission_is_off():
    async with harness(queue_timeout=0) as h:
        client = Client()
        scope = h.scope("POST", "/work")
        scope["state"] = {}
        h.release_work.set()
        await h.app(scope, client.receive, client.send)
        assert client.status == 200 and h.events == []


async def test_a_reply_recorded_after_the_response_is_complete_is_not_taken_for_a_departure():
    async with harness() as h:
        client = Client()
        await h.start(client, "/record-after-reply")
        assert h.recorded == ["after-reply"] and client.status == 200 and h.events == []


async def test_a_finished_request_leaves_no_reference_cycle_for_the_garbage_collector():
    """Under load every cycle waits for the cyclic GC (CPU and pauses): reference counting must free a request's watch."""

    def watches() -> int:
        return sum(1 for o in gc.get_objects() if type(o).__name__ == "_Watch")

    gc.collect()
    gc.disable()
    try:
        async with harness() as h:
            h.release_work.set()
            client = Client()
            await h.start(client)
            for _ in range(5):
                await asyncio.sleep(0)  # the connection reader's cancellation runs to its end
            assert client.status == 200
            del client
            assert watches() == 0
    finally:
        gc.enable()
