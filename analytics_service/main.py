"""The analytics service: `uvicorn analytics_service.main:app --port 8001`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry

from servicekit.connections import server_settings
from servicekit.docs import install_offline_docs
from servicekit.errors import install_error_handlers
from servicekit.logging import configure_logging
from servicekit.middleware import RequestContextMiddleware
from servicekit.openapi import bearer_auth, edit_openapi, operation_id
from servicekit.runtime import freeze_startup_objects
from servicekit.tracing import Tracing

from .api import analytics, health
from .api.deps import State
from .core.config import Settings
from .core.metrics import AnalyticsMetrics
from .seed import load_demo_data
from .storage import open_store
from .storage.guard import DatabaseUnavailable, GuardedStore

TAGS = [
    {"name": "analytics", "description": "Read and record message counts"},
    {"name": "health", "description": "Welcome, liveness and readiness"},
]


def create_app(settings: Settings | None = None, *, tracing: Tracing | None = None) -> FastAPI:
    """Build the app; the database opens in the lifespan, not here.

    `tracing` defaults to what the OTEL_* variables ask for (usually nothing: see docs/observability.md).
    """
    settings = settings or Settings()
    metrics = AnalyticsMetrics(CollectorRegistry())
    tracing = tracing or Tracing.from_environ("analytics")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[State]:
        configure_logging(level=settings.log_level, fmt=settings.log_format, trace_ids=tracing is not None)
        server_settings()  # the connection guard's settings: a bad value fails here, not per connection
        async with AsyncExitStack() as resources:
            if tracing is not None:
                tracing.start()
                resources.callback(tracing.stop)
            store = GuardedStore(
                open_store(
                    settings.database_url,
                    pool_size=settings.postgres_pool_size,
                    timeout=settings.database_timeout,
                    statement_timeout=settings.database_statement_timeout,
                ),
                metrics=metrics,
                failures=settings.database_failures,
                retry_after=settings.database_retry_after,
            )
            # Registered before start: a store that fails half-way through starting still closes
            # what it opened (close() is safe on a store that never opened).
            resources.push_async_callback(store.close)
            await store.start()
            if settings.seed_demo_data:
                await load_demo_data(store)
            freeze_startup_objects()
            yield {"settings": settings, "store": store, "metrics": metrics}

    app = FastAPI(
        title="DACA Analytics Service",
        description="Counts the messages each user has sent, durably and idempotently.",
        version="0.1.0",
        lifespan=lifespan,
        openapi_tags=TAGS,
        generate_unique_id_function=operation_id,
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_credentials="*" not in settings.cors_origins,
        allow_methods=["GET", "POST"],
        allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
    )
    app.add_middleware(RequestContextMiddleware, metrics=metrics, max_body_bytes=settings.max_body_bytes)
    install_error_handlers(app)
    install_offline_docs(app)
    # The schema states what this process enforces: bearer auth only when a token is configured.
    edit_openapi(app, *([bearer_auth(description="Authorization: Bearer <ANALYTICS_API_TOKEN>")] if settings.api_token else []))

    @app.exception_handler(DatabaseUnavailable)
    async def database_unavailable(_: Request, exc: DatabaseUnavailable) -> JSONResponse:
        # A database outage is not a bug: no traceback, and clients may come back later.
        return JSONResponse({"detail": "Database unavailable"}, status_code=503, headers={"Retry-After": str(exc.retry_after)})

    app.include_router(health.router)
    app.include_router(analytics.router)
    if tracing is not None:
        tracing.instrument_app(app)
    return app


app = create_app()
