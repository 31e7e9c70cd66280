"""Typed access to what the lifespan created, for route signatures."""

from __future__ import annotations

import hmac
from typing import Annotated, TypedDict

from fastapi import Depends, HTTPException, Request

from ..core.config import Settings
from ..core.metrics import AnalyticsMetrics
from ..storage import Store


class State(TypedDict):
    settings: Settings
    store: Store
    metrics: AnalyticsMetrics


async def get_store(request: Request) -> Store:
    return request.state.store  # type: ignore[no-any-return]


async def get_metrics(request: Request) -> AnalyticsMetrics:
    return request.state.metrics  # type: ignore[no-any-return]


async def get_settings(request: Request) -> Settings:
    return request.state.settings  # type: ignore[no-any-return]


async def require_token(request: Request) -> None:
    """When ANALYTICS_API_TOKEN is set, demand `Authorization: Bearer <token>` (constant time)."""
    token = request.state.settings.api_token
    if token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    expected = token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        raise HTTPException(401, "Missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"})


StoreDep = Annotated[Store, Depends(get_store)]
MetricsDep = Annotated[AnalyticsMetrics, Depends(get_metrics)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
Authorized = Depends(require_token)
