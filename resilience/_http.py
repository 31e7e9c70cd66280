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

    Each attempt's connect, write, pool and read limits come from the policy, clipped to the
    time left before the call's deadline. `client.send` reads the whole body inside the attempt,
    so a peer that stalls mid-body is caught by the same limits.
    """
    limits = pipeline.policy.timeouts

    async def attempt(remaining: float) -> httpx.Response:
        request.extensions["timeout"] = {
            "connect": min(limits.connect, remaining),
            "read": min(limits.read, remaining),
            "write": min(limits.write, remaining),
            "pool": min(limits.pool, remaining),
        }
        response = await client.send(request)
        if response.status_code not in answers:
            response.raise_for_status()
        return response

    return await pipeline.call(attempt, idempotent=is_idempotent(request))
