"""Sending an `httpx.Request` through a pipeline, with per-attempt timeouts."""

from __future__ import annotations

import httpx

from ._outcome import Outcome
from ._pipeline import Pipeline

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
IDEMPOTENCY_HEADER = "Idempotency-Key"


def is_idempotent(request: httpx.Request) -> bool:
    """Safe to send twice: an idempotent method, or a request carrying an idempotency key."""
    return request.method in IDEMPOTENT_METHODS or IDEMPOTENCY_HEADER in request.headers


async def send(
    pipeline: Pipeline,
    client: httpx.AsyncClient,
    request: httpx.Request,
    *,
    answers: frozenset[int] = frozenset(),
) -> Outcome[httpx.Response]:
    """Send `request` through `pipeline`; a 4xx/5xx answer becomes a classified failure.

    Statuses in `answers` (say 404 for a lookup) are returned as values, not failures.

    Each attempt's connect, write and pool limits come from the policy, clipped to the time the
    pipeline allows the attempt; the read limit is that time itself: `timeouts.read` when a
    retry could follow, all the time left on the last attempt. `client.send` reads the whole
    body inside the attempt, so a peer that stalls mid-body is caught by the same limits.
    """
    limits = pipeline.policy.timeouts
    in_flight = 0

    async def attempt(allowed: float) -> httpx.Response:
        nonlocal in_flight
        # A hedged copy runs beside the first: it gets a request of its own to carry its limits.
        copy = request if not in_flight else _copy(request)
        copy.extensions["timeout"] = {
            "connect": min(limits.connect, allowed),
            "read": allowed,
            "write": min(limits.write, allowed),
            "pool": min(limits.pool, allowed),
        }
        in_flight += 1
        try:
            response = await client.send(copy)
        finally:
            in_flight -= 1
        if response.status_code not in answers:
            response.raise_for_status()
        return response

    return await pipeline.call(attempt, idempotent=is_idempotent(request))


def _copy(request: httpx.Request) -> httpx.Request:
    return httpx.Request(
        request.method, request.url, headers=request.headers, content=request.content, extensions=dict(request.extensions)
    )
