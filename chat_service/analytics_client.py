"""Every call from chat to analytics, each through its resilience pipeline."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

import httpx
import structlog
from pydantic import SecretStr

from resilience import IDEMPOTENCY_HEADER, Fallback, Outcome, Pipeline, Reason, send
from servicekit.context import current_request_id

REQUEST_ID_HEADER = "X-Request-ID"


def path_segment(value: str) -> str:
    """Escape a value for use as exactly one URL path segment (dots too, so '..' stays a name)."""
    escaped = quote(value, safe="")
    return escaped.replace(".", "%2E") if set(value) == {"."} else escaped


@dataclass(frozen=True, slots=True)
class Count:
    """A user's message count; `fallback` names why it is 0 when analytics did not answer."""

    value: int
    fallback: Reason | None = None


@dataclass(frozen=True, slots=True)
class RecordItem:
    user_id: str
    message_id: str
    timestamp: str

    def as_json(self) -> dict[str, str]:
        return {"user_id": self.user_id, "message_id": self.message_id, "timestamp": self.timestamp}


class AnalyticsClient:
    """Reads counts and records messages; never raises for analytics' failures."""

    def __init__(self, http: httpx.AsyncClient, *, read: Pipeline, record: Pipeline, token: SecretStr | None = None) -> None:
        self._http = http
        self.read_pipeline = read
        self.record_pipeline = record
        self._auth = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = dict(self._auth)
        request_id = current_request_id()
        if request_id:
            headers[REQUEST_ID_HEADER] = request_id
        if extra:
            headers.update(extra)
        return headers

    async def message_count(self, user_id: str) -> Count:
        """The user's count, 0 for an unknown user, or 0 with the fallback reason."""
        request = self._http.build_request("GET", "/analytics/" + path_segment(user_id), headers=self._headers())
        outcome = await send(self.read_pipeline, self._http, request, answers=frozenset({404}))
        if isinstance(outcome, Fallback):
            return Count(0, outcome.reason)
        response = outcome.value
        if response.status_code == 404:
            return Count(0)
        try:
            count = response.json()["message_count"]
        except (ValueError, KeyError, TypeError):
            count = None
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            structlog.get_logger(component="analytics").warning("analytics_invalid_response", status=200)
            return Count(0, "invalid_response")
        return Count(count)

    async def record_batch(self, items: Sequence[RecordItem]) -> Outcome[httpx.Response]:
        """Deliver records; every item's message id makes redelivery safe."""
        body = json.dumps({"items": [item.as_json() for item in items]}).encode()
        key = items[0].message_id if len(items) == 1 else f"batch-{items[0].message_id}-{len(items)}"
        request = self._http.build_request(
            "POST",
            "/messages/batch",
            content=body,
            headers=self._headers({"Content-Type": "application/json", IDEMPOTENCY_HEADER: key}),
        )
        return await send(self.record_pipeline, self._http, request)
