"""Welcome, liveness, readiness and metrics."""

from __future__ import annotations

import math

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from servicekit.metrics import exposition
from servicekit.openapi import responses

from ..models import Health, Readiness, Welcome
from .deps import MetricsDep, SettingsDep, StoreDep

router = APIRouter(tags=["health"])


@router.get("/", response_model=Welcome, summary="Welcome")
async def root() -> dict[str, str]:
    """Greet and point at the API docs."""
    return {"message": "Welcome to the DACA Analytics Service! Access /docs for the API documentation."}


@router.get("/healthz", response_model=Health, summary="Liveness")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers (no dependency is checked)."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness",
    responses=responses(503, models={503: Readiness}, descriptions={503: "The database does not answer"}),
)
async def readyz(store: StoreDep, settings: SettingsDep) -> JSONResponse:
    """Readiness: the database answers a query."""
    try:
        await store.ping()
    except Exception as error:  # any database failure means "not ready", never a 500
        # Ask again when the outage guard next probes the database, not in a tight loop.
        retry_after = str(math.ceil(settings.database_retry_after))
        return JSONResponse(
            {"status": "unavailable", "database": type(error).__name__}, status_code=503, headers={"Retry-After": retry_after}
        )
    return JSONResponse({"status": "ok", "database": "ok"})


@router.get("/metrics", include_in_schema=False)
async def metrics(registry: MetricsDep) -> Response:
    """Prometheus metrics."""
    return Response(exposition(registry.registry), media_type=CONTENT_TYPE_LATEST)
