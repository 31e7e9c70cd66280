"""What a failed model call means: the classifier for model pipelines, and the errors callers see.

ModelCallError                 (status: the HTTP status a client should get)
 ├── ModelUnavailable          503, with retry_after: every endpoint is down, rate limited or open
 ├── ModelTimeout              504: an endpoint timed out and none answered instead
 ├── ModelBadAnswer            502: endpoints answered, but not with anything usable
 └── ModelStreamInterrupted    502/504: a stream failed after output reached the caller (no retry)
"""

from __future__ import annotations

import json

import aiohttp
import httpx2
import openai
from agents import ModelBehaviorError

from resilience import Failure, InvalidResponseError, parse_retry_after

RETRYABLE_STATUSES = frozenset({408, 409, 429})
"""With every 5xx: the statuses worth another attempt (the openai client's own rule)."""


class ModelCallError(Exception):
    """No usable reply; `kind` labels metrics and logs, `detail` is safe to show a client."""

    status = 502
    kind = "invalid"
    detail = "The model gave an answer we cannot use"

    def __init__(
        self, *, retry_after: int | None = None, kind: str | None = None, detail: str | None = None, status: int | None = None
    ) -> None:
        super().__init__(detail or self.detail)
        self.retry_after = retry_after
        if status is not None:
            self.status = status
        if kind is not None:
            self.kind = kind
        if detail is not None:
            self.detail = detail


class ModelUnavailable(ModelCallError):
    status = 503
    kind = "unavailable"
    detail = "The model provider is unavailable"


class ModelTimeout(ModelCallError):
    status = 504
    kind = "timeout"
    detail = "The model provider timed out"


class ModelBadAnswer(ModelCallError):
    pass


class ModelStreamInterrupted(ModelCallError):
    kind = "interrupted"
    detail = "The model stream broke off"


def _aiohttp_cause(error: BaseException) -> aiohttp.ClientError | None:
    current: BaseException | None = error
    while current is not None:
        if isinstance(current, aiohttp.ClientError):
            return current
        current = current.__cause__ or current.__context__
    return None


def _retry_after(headers: httpx2.Headers) -> float | None:
    milliseconds = headers.get("retry-after-ms")
    if milliseconds is not None and milliseconds.isdigit():
        return int(milliseconds) / 1000
    return parse_retry_after(headers.get("retry-after"))


def classify_model_error(error: BaseException) -> Failure | None:
    """The `on=` predicate of model pipelines: openai, httpx2 and Agents SDK errors.

    Transient: timeouts, connect and transport errors, 408/409/429 and 5xx. A bad answer
    (not JSON, not the schema, empty) is `invalid_response`, never retried. Anything else is
    a bug and propagates.
    """
    if isinstance(error, openai.APIStatusError):
        status = error.status_code
        if status in RETRYABLE_STATUSES or status >= 500:
            return Failure("status", transient=True, status=status, retry_after=_retry_after(error.response.headers))
        return Failure("status", transient=False, status=status)
    if isinstance(error, openai.APIConnectionError | httpx2.TransportError):
        # The aiohttp transport reports every aiohttp connection error, a refused connection and
        # a peer that hung up included, as httpx2.ConnectTimeout: judge by the real cause.
        cause = _aiohttp_cause(error)
        if cause is not None and not isinstance(cause, TimeoutError):
            return Failure("connect" if isinstance(cause, aiohttp.ClientConnectorError) else "transport", transient=True)
    if isinstance(error, openai.APITimeoutError | httpx2.TimeoutException | TimeoutError):
        return Failure("timeout", transient=True)
    if isinstance(error, openai.APIConnectionError | httpx2.ConnectError):
        return Failure("connect", transient=True)
    if isinstance(error, httpx2.TransportError):
        return Failure("transport", transient=True)
    if isinstance(error, openai.APIError | ModelBehaviorError | InvalidResponseError | json.JSONDecodeError):
        return Failure("invalid_response", transient=False)
    return None
