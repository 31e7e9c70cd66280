"""User look-ups: the tutorial's /users/{user_id} and its exercise 1, the analytics view."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from servicekit.openapi import responses
from servicekit.validation import UserId

from ..models import UserAnalytics, UserInfo
from .auth import AUTH_DESCRIPTIONS, KEYS_UNAVAILABLE, CallerDep, acting_user
from .deps import AnalyticsDep, MetricsDep

router = APIRouter(tags=["users"])
USER_ERRORS = responses(401, 403, 422, 503, descriptions={**AUTH_DESCRIPTIONS, 503: KEYS_UNAVAILABLE})

Role = Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_-]{1,32}$", description="1-32 of letters, digits, _ -; default guest")]


@router.get("/users/{user_id}", response_model=UserInfo, summary="Echo a user", responses=USER_ERRORS)
async def get_user(user_id: Annotated[UserId, Path()], caller: CallerDep, role: Role = None) -> UserInfo:
    """Return the user's id and role (guest when none is given)."""
    acting_user(caller, user_id)
    return UserInfo(user_id=user_id, role=role or "guest")


@router.get("/users/{user_id}/analytics", response_model=UserAnalytics, summary="A user's count", responses=USER_ERRORS)
async def get_user_analytics(
    user_id: Annotated[UserId, Path()], caller: CallerDep, analytics: AnalyticsDep, metrics: MetricsDep
) -> UserAnalytics:
    """Return the user's message count as chat sees it: 0 and the reason as `source` when analytics cannot answer."""
    acting_user(caller, user_id)
    count = await analytics.message_count(user_id)
    metrics.analytics_calls.labels("read", count.fallback or "ok").inc()
    return UserAnalytics(user_id=user_id, message_count=count.value, source=count.fallback or "analytics")
