"""Refusing at the door: the 503 the server's protocol writes itself, before any ASGI work.

Under overload most requests to a work route are refused. Through the ASGI stack each refusal
costs a scope, a request-response cycle, a task and the middleware stack, on the one core that
should be serving the admitted ones; that cost is what bounds goodput at 3x overload
(docs/overload.md). `ShedGate` lives in the lifespan state (`GATE_KEY`), and the connection
guard (`servicekit.connections.GuardedHttpToolsProtocol`) asks it once a request's headers are
parsed: for a work route the limiter would refuse right now (`Limiter.would_shed`, the same
decision `try_acquire`/`enqueue` make), the protocol discards the body and writes the answer
built here. The middleware stays the second line: it still sheds what the gate lets through
(queue timeouts, a slot taken meanwhile) and everything when no server asks the gate (tests
through an in-process ASGI transport).

The gate also refuses a work-route request that waited in the kernel longer than
`max_read_wait` before the server read it (the protocol says how long: `read_wait`). After a
stall, or while the loop is too busy to read, what it reads has waited seconds and its client is
about to give up: run, it was cancelled mid-run by the thousand and kept the loop swamped;
refused, the backlog clears at a refusal's cost (docs/overload.md, stop 28). Every late read is
also reported to the limiter, refused for it or not: a backlog halves the limit, so the CPU
drains it before serving more (`GradientLimit.read_late`).

The answer is the middleware's: `503`, `Retry-After`, the same JSON body and an `X-Request-ID`.
It is counted as the middleware counts it (`on_event("queue_full")`, or `"read_late"`, and the
request metrics' `503` for the route), and not logged per request: a flood must not flood the log.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import Counter, Histogram

from ..metrics import HttpMetrics
from ..middleware import request_id
from ._limiter import Limiter
from ._middleware import OVERLOADED

GATE_KEY = "admission_gate"


class _Route:
    """A work route's request metrics, bound at its first refusal (as the middleware's series
    appear): from then on a refusal costs an increment, not a label look-up."""

    __slots__ = ("_labels", "_latency", "_metrics", "_requests")

    def __init__(self, method: str, path: str, metrics: HttpMetrics | None) -> None:
        self._metrics, self._labels = metrics, (method, path)
        self._requests: Counter | None = None
        self._latency: Histogram | None = None

    def count(self, seconds: float) -> None:
        if self._requests is None or self._latency is None:
            if self._metrics is None:
                return
            self._requests = self._metrics.requests.labels(*self._labels, "503")
            self._latency = self._metrics.latency.labels(*self._labels)
        self._requests.inc()
        self._latency.observe(seconds)


class Refusal:
    """One request the gate refuses; `answer` once its body has been read (and discarded)."""

    __slots__ = ("_gate", "reason", "route", "started")

    def __init__(self, gate: ShedGate, route: _Route, reason: str) -> None:
        self._gate, self.route, self.started = gate, route, time.perf_counter()
        self.reason = reason  # queue_full, or read_late

    def answer(self, headers: Sequence[tuple[bytes, bytes]]) -> tuple[bytes, bytes]:
        """Counts the refusal; returns its header lines (each ending in CRLF) and its body."""
        return self._gate._answer(self, headers)


class ShedGate:
    """Says which requests to refuse before they are built, and what to answer them.

    `routes` are the middleware's: (method, exact path). Left to the app, as before: a request
    that carries `Origin` (its CORS middleware must add its headers to any answer a browser may
    read) and one whose declared body is over `max_body_bytes` (it answers 413 whatever the load).
    `max_read_wait`: refuse a request that waited this many seconds in the kernel (None or 0: never).
    """

    def __init__(
        self,
        limiter: Limiter,
        *,
        routes: Iterable[tuple[str, str]],
        retry_after: int = 1,
        on_event: Callable[[str], None] | None = None,
        metrics: HttpMetrics | None = None,
        max_body_bytes: int | None = None,
        max_read_wait: float | None = None,
    ) -> None:
        self._limiter = limiter
        self._max_read_wait = max_read_wait
        self._max_body = max_body_bytes
        self._routes = {(method.encode("ascii"), path.encode("ascii")): _Route(method, path, metrics) for method, path in routes}
        self._on_event = on_event or (lambda _: None)
        body = json.dumps(OVERLOADED).encode()  # the very bytes the middleware sends
        self._head = b"content-type: application/json\r\ncontent-length: %d\r\nretry-after: %d\r\nx-request-id: " % (
            len(body),
            retry_after,
        )
        self._body = body
        self._passed = 0  # let through in this pass of the loop, not yet asking for a slot

    def sheds(
        self,
        method: bytes,
        path: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        read_wait: Callable[[], float | None] | None = None,
    ) -> Refusal | None:
        """A `Refusal` if this request is to be refused now, else None (serve it as usual).

        `path` is the raw one, without the query: a %-encoded path is not matched and goes on to
        the app, whose middleware decides on the decoded path. `read_wait` says how long the
        request waited in the kernel (None: unknown); it is asked for every work-route request,
        and a late one is reported to the limiter (`Limiter.read_late`). Called by the server's
        protocol, on the running loop: a work-route request let through is counted until the
        loop's next pass (`_let_through`).
        """
        route = self._routes.get((method, path))
        if route is None:
            return None
        # Asked of every work-route request (~2 µs), refused or not: a backlog in the kernel must
        # lower the limit even while the door refuses everything it reads as queue_full.
        late = self._late(read_wait)
        if late:
            self._limiter.read_late()
        reason = "queue_full" if self._limiter.would_shed(self._passed) else "read_late" if late else None
        if reason is not None and not self._left_to_the_app(headers):
            return Refusal(self, route, reason)
        self._let_through()
        return None

    def _late(self, read_wait: Callable[[], float | None] | None) -> bool:
        if not self._max_read_wait or read_wait is None:
            return False
        waited = read_wait()
        return waited is not None and waited >= self._max_read_wait

    def _left_to_the_app(self, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        for name, value in headers:
            if name == b"origin":
                return True
            if name == b"content-length" and self._max_body is not None and _over(value, self._max_body):
                return True
        return False

    def _let_through(self) -> None:
        # The requests read in one pass of the loop are all asked about before any of them runs
        # and takes its slot (their tasks start in the next pass). Counting them here keeps the
        # door from letting a whole batch through for one free slot, to be refused later by the
        # middleware at several times the cost. The count is forgotten before those tasks run
        # (scheduled ahead of them): from then on they hold slots of their own, if their bodies
        # came with their headers (one whose body comes later asks for its slot only then, as
        # before). An eager task factory (Python 3.12+) would take the slot at once and be
        # counted twice for one pass; uvicorn on 3.11 creates plain tasks.
        if not self._passed:
            asyncio.get_running_loop().call_soon(self._forget_passed)
        self._passed += 1

    def _forget_passed(self) -> None:
        self._passed = 0

    def _answer(self, refusal: Refusal, headers: Sequence[tuple[bytes, bytes]]) -> tuple[bytes, bytes]:
        self._on_event(refusal.reason)
        if refusal.reason == "queue_full":
            self._limiter.refused_at_door()  # demand the limit held back (a late read says nothing of it)
        refusal.route.count(time.perf_counter() - refusal.started)
        return self._head + request_id(headers).encode() + b"\r\n", self._body


def _over(length: bytes, limit: int) -> bool:
    try:
        return int(length) > limit
    except ValueError:
        return True  # the app says what is wrong with it
