"""Which errors are transient: the `on=` predicate for HTTP calls made with httpx."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

import httpx

from ._errors import InvalidResponseError
from ._outcome import Reason

TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class Failure:
    """What an error means to the pipeline.

    `transient` failures are retried and counted by the breaker; the others end the call at
    once and count as a live peer. `retry_after` is the peer's own wait hint in seconds.
    """

    reason: Reason
    transient: bool
    status: int | None = None
    retry_after: float | None = None


Classifier: TypeAlias = Callable[[BaseException], Failure | None]
"""Maps an exception to a Failure, or None for an error that is a bug and must propagate."""


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date); None if absent or bad."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, moment.timestamp() - current)


def classify_httpx(error: BaseException) -> Failure | None:
    """The classifier for httpx calls: timeouts, connect and transport errors, 429/502/503/504."""
    if isinstance(error, httpx.TimeoutException | TimeoutError):
        return Failure("timeout", transient=True)
    if isinstance(error, httpx.ConnectError):
        return Failure("connect", transient=True)
    if isinstance(error, httpx.TransportError):
        return Failure("transport", transient=True)
    if isinstance(error, httpx.HTTPStatusError):
        status = error.response.status_code
        if status in TRANSIENT_STATUSES:
            retry_after = parse_retry_after(error.response.headers.get("retry-after"))
            return Failure("status", transient=True, status=status, retry_after=retry_after)
        return Failure("status", transient=False, status=status)
    if isinstance(error, InvalidResponseError | httpx.DecodingError):
        return Failure("invalid_response", transient=False)
    return None
