"""Counts per user: read one, record one, record a batch."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path

from ..models import Analytics, BatchResult, RecordBatch, Recorded, RecordMessage, UserId
from ..storage import StoreRecord
from .deps import Authorized, MetricsDep, SettingsDep, StoreDep

UNAVAILABLE: dict[int | str, dict[str, object]] = {
    503: {
        "description": "The database is unavailable; retry after the Retry-After seconds",
        "content": {"application/json": {"example": {"detail": "Database unavailable"}}},
    }
}
router = APIRouter(dependencies=[Authorized], responses=UNAVAILABLE)
UserPath = Annotated[UserId, Path()]

NOT_FOUND = {404: {"description": "User not found", "content": {"application/json": {"example": {"detail": "User not found"}}}}}


def _count_outcomes(metrics: MetricsDep, results: list[Recorded]) -> None:
    duplicates = sum(1 for r in results if r.duplicate)
    metrics.duplicates.inc(duplicates)
    metrics.records.inc(len(results) - duplicates)


@router.get("/analytics/{user_id}", response_model=Analytics, responses=NOT_FOUND)
async def get_analytics(store: StoreDep, user_id: UserPath) -> Analytics:
    """Return how many messages the user has sent."""
    count = await store.count(user_id)
    if count is None:
        raise HTTPException(404, "User not found")
    return Analytics(message_count=count)


@router.post("/analytics/{user_id}/messages", response_model=Analytics)
async def record_message(store: StoreDep, metrics: MetricsDep, body: RecordMessage, user_id: UserPath) -> Analytics:
    """Count one message; recording the same message_id again changes nothing."""
    [result] = await store.record([StoreRecord(user_id, body.message_id, body.timestamp.isoformat())])
    _count_outcomes(metrics, [Recorded(user_id=user_id, message_id=body.message_id, **result._asdict())])
    return Analytics(message_count=result.message_count)


@router.post("/messages/batch", response_model=BatchResult)
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
