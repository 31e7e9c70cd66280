"""Welcome, liveness, readiness, dependencies and metrics."""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from servicekit.metrics import exposition
from servicekit.openapi import responses

from ..models import DependencyReport, Health, Readiness, Welcome
from .deps import AnalyticsDep, AuthenticatorDep, DelivererDep, LLMDep, MetricsDep, OutboxDep, RateLimiterDep

router = APIRouter(tags=["health"])

# How long a scrape waits for the outbox's count before answering with the last one.
SCRAPE_COUNT_WAIT = 0.25


@router.get("/", response_model=Welcome, summary="Welcome")
async def root() -> dict[str, str]:
    """Greet and point at the API docs."""
    return {"message": "Welcome to the DACA Chat Service! Access /docs for the API documentation."}


@router.get("/healthz", response_model=Health, summary="Liveness")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers (no dependency is checked)."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness",
    responses=responses(
        503,
        models={503: Readiness},
        descriptions={503: "The outbox cannot take records (full disk, not open, at its bound), or no token key is loaded yet"},
    ),
)
async def readyz(outbox: OutboxDep, authenticator: AuthenticatorDep) -> JSONResponse:
    """Readiness: the outbox takes records and, with auth on, token keys are loaded. Analytics is not checked."""
    if not outbox.accepting:
        return JSONResponse({"status": "unavailable", "outbox": outbox.reason}, status_code=503, headers={"Retry-After": "1"})
    if authenticator is not None and not authenticator.ready:
        return JSONResponse(
            {"status": "unavailable", "auth": "no verification keys yet"},
            status_code=503,
            headers={"Retry-After": str(authenticator.retry_after())},
        )
    return JSONResponse({"status": "ok"})


@router.get("/health/dependencies", response_model=DependencyReport, summary="Dependency states")
async def dependencies(
    analytics: AnalyticsDep, outbox: OutboxDep, deliverer: DelivererDep, llm: LLMDep, limiter: RateLimiterDep
) -> dict[str, object]:
    """Show analytics' breakers, the outbox's state and depth, the model endpoints' breakers and the rate limiter."""
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
        # exact, or depth None when a stalled writer cannot count within a second
        "outbox": {**dataclasses.asdict(await outbox.stats(max_wait=1.0)), "delivered": deliverer.delivered},
        "llm": {
            "provider": llm.provider,
            "endpoints": [
                {
                    "name": endpoint.name,
                    "breaker": endpoint.pipeline.breaker.state,
                    "consecutive_failures": endpoint.pipeline.breaker.consecutive_failures,
                    "reopens_in": round(endpoint.pipeline.breaker.remaining_open, 2),
                    "in_flight": endpoint.limit.in_flight,
                    "max_concurrency": endpoint.limit.limit,
                    "retry_tokens": round(endpoint.pipeline.budget.tokens, 2),
                }
                for endpoint in llm.endpoints
            ],
            "offline_fallback": llm.offline_fallback,
        },
        "rate_limit": None
        if limiter is None
        else {
            "storage": "memory" if limiter.guard is None else "redis",
            "breaker": None if limiter.guard is None else limiter.guard.breaker.state,
        },
    }


@router.get("/metrics", include_in_schema=False)
async def metrics(registry: MetricsDep, outbox: OutboxDep, deliverer: DelivererDep) -> Response:
    """Prometheus metrics."""
    # A count at most once a second, whoever scrapes; never a scrape held by a stalled disk.
    stats = await outbox.stats(max_age=1.0, max_wait=SCRAPE_COUNT_WAIT)
    registry.outbox_accepting.set(1 if outbox.accepting else 0)
    registry.outbox_writer_busy.set(round(outbox.writer.busy_seconds(), 3))
    if stats.depth is not None and stats.dead_letters is not None:
        registry.outbox_depth.set(stats.depth)
        registry.outbox_dead_letters.set(stats.dead_letters)
        registry.outbox_stalled.set(round(deliverer.stalled_seconds(), 3) if stats.depth else 0)
    return Response(exposition(registry.registry), media_type=CONTENT_TYPE_LATEST)
