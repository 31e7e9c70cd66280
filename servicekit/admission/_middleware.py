"""Admission control at the front door: a pure ASGI middleware in front of the work routes.

For a request to a work route it

1. reads the whole body first, so a slow uploader never holds a slot (bodies are small and
   capped by the outer middleware; the connection guard bounds how long a body may take);
2. takes a slot from the `Limiter` at once, or queues briefly, or answers `503` with
   `Retry-After` before any work is done;
3. watches the connection from then on: a client that leaves while queued is dropped, and one
   that leaves while its request runs gets that run cancelled, until the route *commits* the
   reply (`commit_reply`, right before the outbox append) or the response starts. So a reply
   the client can no longer get is never recorded, and a recorded one is always sent.

Every other route (health, metrics, docs) passes through untouched: it is never shed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..middleware import BODY_REFUSED_KEY
from ._limiter import Limiter, Permit, Shed

STATE_KEY = "admission"
_WATCH_KEY = "admission_watch"
OVERLOADED = {"detail": "The service is overloaded; retry after the Retry-After seconds"}
CLIENT_CLOSED_REQUEST = 499  # nginx's status for "the client went away first": logs and metrics only


class ClientGone(Exception):
    """The client left before its reply was committed; nothing may be recorded for it."""


class _Watch:
    """Reads the connection after the body, so a departure is noticed while the request waits or runs."""

    __slots__ = ("_reader", "_task", "cancelled_run", "committed", "gone", "responded")

    def __init__(self, receive: Receive, task: asyncio.Task[object]) -> None:
        self._task: asyncio.Task[object] | None = task
        self.committed = False
        self.responded = False  # the whole response was sent (the server then reports a disconnect too)
        self.gone = asyncio.Event()
        self._reader: asyncio.Future[None] | None = asyncio.ensure_future(self._read(receive))
        self.cancelled_run = False

    async def _read(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass  # nothing else can arrive after the body; keep waiting for the end
        self.gone.set()
        if not self.committed and self._task is not None:
            self.cancelled_run = True
            self._task.cancel()

    def stop(self) -> None:
        self.committed = True
        # Drop both tasks: the request's scope holds this watch, so keeping them would make every
        # request a reference cycle (task -> frames -> scope -> watch -> task) that only the
        # cyclic GC frees, with the reader's CancelledError and traceback attached.
        reader, self._reader, self._task = self._reader, None, None
        if reader is not None:
            reader.cancel()


def commit_reply(request: Request) -> None:
    """Mark the point after which this request runs to its end even if its client leaves.

    Call it right before making the reply's effects permanent (chat: the outbox append).
    Raises `ClientGone` if the client already left: then record nothing.
    """
    watch: _Watch | None = request.scope.get("state", {}).get(_WATCH_KEY)
    if watch is None:
        return  # not an admitted route, or no admission control configured
    if watch.gone.is_set() and not watch.responded:
        raise ClientGone
    watch.committed = True


async def _read_body(receive: Receive) -> list[Message] | None:
    """The request's body messages, or None if the client disconnected first."""
    messages: list[Message] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        messages.append(message)
        if not message.get("more_body", False):
            return messages


class _RouteLabel:
    """Stands in for the router's match on a shed request: the request context labels metrics by `path`."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


class AdmissionMiddleware:
    """Admits requests to `routes` (method, exact path) through the lifespan's `Limiter`.

    The limiter is looked up in the lifespan state under `"admission"`; without one, requests
    pass through (admission off). `on_event` receives `queue_full`, `queue_timeout`,
    `client_gone` (left while queued) and `cancelled` (left while running).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: Iterable[tuple[str, str]] = (("POST", "/chat/"),),
        retry_after: int = 1,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.app = app
        # Exact paths: a look-up per request, and a path nobody serves is left to the router's 404
        # (a prefix would admit, shed and label with whatever path a client makes up).
        self.routes = {(method, path): _RouteLabel(path) for method, path in routes}
        self.on_event = on_event or (lambda _: None)
        body = json.dumps(OVERLOADED).encode()
        self._shed_body = body
        self._shed_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(retry_after).encode()),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limiter: Limiter | None = scope.get("state", {}).get(STATE_KEY) if scope["type"] == "http" else None
        route = None if limiter is None else self.routes.get((scope["method"], scope["path"]))
        if limiter is None or route is None:
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:
            if not scope["state"].get(BODY_REFUSED_KEY):  # a body over the cap was answered 413 outside
                self.on_event("client_gone")
            await _send_closed(send)
            return
        permit: Permit | None = limiter.try_acquire()
        place = None
        if permit is None:
            try:
                place = limiter.enqueue()
            except Shed as shed:
                scope["route"] = route  # the route label for the metrics outside, without matching again
                await self._shed(send, shed)
                return
        task = asyncio.current_task()
        assert task is not None
        watch = _Watch(receive, task)
        scope["state"][_WATCH_KEY] = watch
        completed = False
        try:
            if place is not None:
                permit = await limiter.wait(place)
            await self.app(scope, _replay(body, watch), _committing(send, watch))
            completed = True
        except Shed as shed:
            watch.stop()  # from here on we only answer: nothing left to cancel
            scope["route"] = route
            await self._shed(send, shed)
        except ClientGone:
            if watch.cancelled_run:
                task.uncancel()  # the app swallowed our cancellation and stopped at the commit instead
            await self._drop(send, watch, "cancelled")
        except asyncio.CancelledError:
            if not (watch.cancelled_run and task.uncancel() == 0):
                raise  # not ours: the server is shutting down
            await self._drop(send, watch, "client_gone" if permit is None else "cancelled")
        finally:
            watch.stop()
            if permit is not None:
                permit.release(completed=completed)

    async def _shed(self, send: Send, shed: Shed) -> None:
        self.on_event(shed.reason)
        await send({"type": "http.response.start", "status": 503, "headers": self._shed_headers})
        await send({"type": "http.response.body", "body": self._shed_body})

    async def _drop(self, send: Send, watch: _Watch, event: str) -> None:
        watch.stop()
        self.on_event(event)
        await _send_closed(send)


async def _send_closed(send: Send) -> None:
    # The connection is closed, so the server discards this; the access log and the request
    # metrics outside still get a status that says what happened.
    await send({"type": "http.response.start", "status": CLIENT_CLOSED_REQUEST, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


def _replay(body: list[Message], watch: _Watch) -> Receive:
    pending = list(body)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        await watch.gone.wait()  # after the body, the only thing left to hear is the end
        return {"type": "http.disconnect"}

    return receive


def _committing(send: Send, watch: _Watch) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            watch.committed = True  # the reply is on its way: finish it rather than cut it
        await send(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            watch.responded = True

    return wrapped
