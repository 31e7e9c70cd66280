"""Counts per user: read one, record one, record a batch."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path

from servicekit.openapi import responses
from servicekit.validation import UserId

from ..models import Analytics, BatchResult, RecordBatch, Recorded, RecordMessage
from ..storage import StoreRecord
from .deps import Authorized, MetricsDep, SettingsDep, StoreDep

# 401 only when ANALYTICS_API_TOKEN is set; the schema then declares the bearer scheme too (main.py).
# 503 (with Retry-After) on every route while the database is unavailable.
router = APIRouter(
    tags=["analytics"],
    dependencies=[Authorized],
    responses=responses(503, descriptions={503: "The database is unavailable; retry after the Retry-After seconds"}),
)
UserPath = Annotated[UserId, Path()]
UNAUTHORIZED = {401: "ANALYTICS_API_TOKEN is set and the bearer token is missing or wrong"}


def _count_outcomes(metrics: MetricsDep, results: list[Recorded]) -> None:
    duplicates = sum(1 for r in results if r.duplicate)
    metrics.duplicates.inc(duplicates)
    metrics.records.inc(len(results) - duplicates)


@router.get(
    "/analytics/{user_id}",
    response_model=Analytics,
    summary="A user's message count",
    responses=responses(401, 404, 422, descriptions={**UNAUTHORIZED, 404: "User not found: no message recorded for this user"}),
)
async def get_analytics(store: StoreDep, user_id: UserPath) -> Analytics:
    """Return how many messages the user has sent."""
    count = await store.count(user_id)
    if count is None:
        raise HTTPException(404, "User not found")
    return Analytics(message_count=count)


@router.post(
    "/analytics/{user_id}/messages",
    response_model=Analytics,
    summary="Record one message",
    responses=responses(401, 413, 422, descriptions=UNAUTHORIZED),
)
async def record_message(store: StoreDep, metrics: MetricsDep, body: RecordMessage, user_id: UserPath) -> Analytics:
    """Count one message; recording the same message_id again changes nothing."""
    [result] = await store.record([StoreRecord(user_id, body.message_id, body.timestamp.isoformat())])
    _count_outcomes(metrics, [Recorded(user_id=user_id, message_id=body.message_id, **result._asdict())])
    return Analytics(message_count=result.message_count)


@router.post(
    "/messages/batch",
    response_model=BatchResult,
    summary="Record a batch of messages",
    responses=responses(
        401, 413, 422, descriptions={**UNAUTHORIZED, 413: "Over ANALYTICS_MAX_BODY_BYTES or ANALYTICS_MAX_BATCH"}
    ),
)
async def record_batch(store: StoreDep, metrics: MetricsDep, settings: SettingsDep, body: RecordBatch) -> BatchResult:
    """Count many messages in one transaction; each message_id counts once per user."""
    if len(body.items) > settings.max_batch:
        raise HTTPException(413, f"A batch holds at most {settings.max_batch} items")
    stored = await store.record([StoreRecord(i.user_id, i.message_id, i.timestamp.isoformat()) for i in body.items])
    results = [
        Recorded(user_id=item.user_id, message_id=item.message_id, **result._asdict())
        for item, result in zip(body.items, stored, strict=True)
    ]
    _count_outcomes(metrics, results)
    return BatchResult(results=results)
