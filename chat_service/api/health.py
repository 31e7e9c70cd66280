"""Welcome, liveness, readiness, dependencies and metrics."""

from __future__ import annotations

import sqlite3

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .deps import AnalyticsDep, DelivererDep, LLMDep, MetricsDep, OutboxDep, RateLimiterDep

router = APIRouter()


@router.get("/")
async def root() -> dict[str, str]:
    """Greet and point at the API docs."""
    return {"message": "Welcome to the DACA Chat Service! Access /docs for the API documentation."}


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers (no dependency is checked)."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "The local outbox cannot be used"}})
async def readyz(outbox: OutboxDep) -> JSONResponse:
    """Readiness: the local outbox works. Analytics is not checked: chat has a fallback for it."""
    try:
        outbox.depth()
    except sqlite3.Error as error:
        return JSONResponse({"status": "unavailable", "outbox": type(error).__name__}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/health/dependencies")
async def dependencies(
    analytics: AnalyticsDep, outbox: OutboxDep, deliverer: DelivererDep, llm: LLMDep, limiter: RateLimiterDep
) -> dict[str, object]:
    """Show analytics' breaker states, the outbox depth, the LLM provider and the rate limiter."""
    pipelines = {"read": analytics.read_pipeline, "record": analytics.record_pipeline}
    return {
        "analytics": {
            name: {
                "breaker": p.breaker.state,
                "breaker_mode": p.breaker.mode,
                "failure_rate": round(p.breaker.failure_rate, 3),
                "window_calls": p.breaker.window_calls,
                "consecutive_failures": p.breaker.consecutive_failures,
                "in_flight": p.bulkhead.in_flight,
                "retry_tokens": round(p.budget.tokens, 2),
            }
            for name, p in pipelines.items()
        },
        "outbox": {"depth": outbox.exact_depth(), "delivered": deliverer.delivered, "dead_letters": outbox.dead_letters()},
        "llm": {"provider": llm.provider},
        "rate_limit": None
        if limiter is None
        else {
            "storage": "memory" if limiter.guard is None else "redis",
            "breaker": None if limiter.guard is None else limiter.guard.breaker.state,
        },
    }


@router.get("/metrics", include_in_schema=False)
async def metrics(registry: MetricsDep, outbox: OutboxDep) -> Response:
    """Prometheus metrics."""
    registry.outbox_depth.set(outbox.depth())
    registry.outbox_dead_letters.set(outbox.dead_letters())
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)
