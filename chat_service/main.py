"""The chat service: `uvicorn chat_service.main:app --port 8000`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CollectorRegistry

from resilience import Pipeline, classify_httpx, log_event
from servicekit.admission import AdmissionMetrics, AdmissionMiddleware, Limiter, ShedGate
from servicekit.connections import ConnectionEvents, raise_open_files_limit, server_settings, watch_accept_errors
from servicekit.docs import install_offline_docs
from servicekit.errors import install_error_handlers
from servicekit.logging import configure_logging, get_logger
from servicekit.middleware import RequestContextMiddleware
from servicekit.openapi import edit_openapi, operation_id, set_max_length
from servicekit.runtime import freeze_startup_objects
from servicekit.tracing import Tracing
from servicekit.transport import AiohttpTransport

from .agent.agent import PersonalizedAgents, build_agent
from .agent.direct_run import DirectRuns
from .agent.llm import build_llm, log_model_event
from .analytics_client import AnalyticsClient
from .api import chat, conversations, health, users
from .api.auth import without_bearer_scheme
from .api.deps import State
from .auth import open_authenticator
from .core.config import Settings
from .core.metrics import ChatMetrics
from .delivery import Deliverer
from .outbox import Outbox
from .rate_limit import build_rate_limiter
from .sessions import open_conversations
from .sessions._open import default_url

# The work routes: what costs model time and records a message. Everything else is never shed.
ADMITTED_ROUTES = (("POST", "/chat/"), ("POST", "/chat"), ("POST", "/chat/stream"))

TAGS = [
    {"name": "chat", "description": "Talk to the agent"},
    {"name": "users", "description": "The tutorial's user echo, and a user's message count as chat sees it"},
    {"name": "sessions", "description": "Read or forget a conversation"},
    {"name": "health", "description": "Welcome, liveness, readiness and dependency states"},
]


def create_app(
    settings: Settings | None = None, *, transport: httpx.AsyncBaseTransport | None = None, tracing: Tracing | None = None
) -> FastAPI:
    """Build the app; clients, the outbox and the agent are created in the lifespan.

    `transport` replaces the network under the analytics client (tests pass a MockTransport).
    `tracing` defaults to what the OTEL_* variables ask for (usually nothing: see docs/observability.md).
    """
    settings = settings or Settings()
    metrics = ChatMetrics(CollectorRegistry())
    tracing = tracing or Tracing.from_environ("chat")
    admission_metrics = AdmissionMetrics(metrics.registry, prefix="chat")
    connection_events = ConnectionEvents(metrics.registry, prefix="chat")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[State]:
        configure_logging(level=settings.log_level, fmt=settings.log_format, trace_ids=tracing is not None)
        log = get_logger("lifespan")
        hooks = (log_event, metrics.on_resilience_event)
        tracer = tracing.tracer("chat_service") if tracing is not None else None
        server_settings()  # the connection guard's settings: a bad value fails here, not per connection
        open_files = raise_open_files_limit()[0]
        # Every resource is entered on the stack as soon as it exists, so a failing start-up step
        # or a failing flush still closes everything opened before it, in reverse order.
        async with AsyncExitStack() as resources:
            if tracing is not None:
                tracing.start()  # before any client exists: their aiohttp sessions carry the trace
                resources.callback(tracing.stop)  # last out: the flush's spans are exported too
            admission = Limiter(settings.admission.to_policy()) if settings.admission.enabled else None
            if admission is not None:
                admission_metrics.bind(admission)
                resources.callback(admission.close)
            resources.callback(watch_accept_errors(asyncio.get_running_loop(), connection_events))
            http = await resources.enter_async_context(
                httpx.AsyncClient(
                    base_url=settings.analytics_url,
                    transport=transport or AiohttpTransport(max_connections=settings.analytics_max_connections),
                    timeout=httpx.Timeout(1.0),  # every call overrides this with its policy's limits
                )
            )
            analytics = AnalyticsClient(
                http,
                read=Pipeline(
                    "analytics-read", settings.analytics_read.to_policy(), on=classify_httpx, hooks=hooks, tracer=tracer
                ),
                record=Pipeline(
                    "analytics-record", settings.analytics_record.to_policy(), on=classify_httpx, hooks=hooks, tracer=tracer
                ),
                token=settings.analytics_api_token,
            )
            outbox = Outbox(
                settings.outbox_path,
                max_rows=settings.outbox_max_rows,
                reserve_bytes=settings.outbox_reserve_bytes,
                append_timeout=settings.outbox_append_timeout or None,
            )
            resources.push_async_callback(outbox.close)
            # A full disk leaves the outbox unavailable: chat starts, answers 503 to chats and on
            # /readyz, and the deliverer keeps retrying. A path that can never work raises here.
            await outbox.open()
            deliverer = Deliverer(outbox, analytics, batch=settings.outbox_batch, linger=settings.outbox_linger)
            deliverer.start()
            resources.push_async_callback(deliverer.stop)
            llm = build_llm(settings, resources, hooks=(log_model_event, metrics.on_model_event), observer=metrics, tracer=tracer)
            for endpoint in llm.endpoints:
                metrics.watch_model_endpoint(endpoint.name, endpoint.pipeline.target)
            for pipeline in (analytics.read_pipeline, analytics.record_pipeline):
                metrics.watch_breaker(pipeline.target)
            limiter = build_rate_limiter(settings.rate_limit_per_minute, settings.redis_url, prefix=settings.rate_limit_prefix)
            if limiter is not None:
                resources.push_async_callback(limiter.close)
            authenticator = await open_authenticator(settings, resources, on_fetch=metrics.on_jwks_fetch)
            conversations = await open_conversations(
                resources,
                url=settings.sessions_url or default_url(settings.outbox_path),
                max_items=settings.session_max_items,
                ttl=settings.session_ttl,
                call_timeout=settings.session_timeout,
                lock_wait=settings.session_lock_wait,
                run_deadline=settings.run_deadline,
                idempotency_ttl=settings.idempotency_ttl,
                on_failure=metrics.on_session_failure,
                hooks=hooks,
                breaker=settings.session_breaker.to_options(),
            )
            metrics.watch_breaker(conversations.guarded.target)
            agent = build_agent(llm.model, tracer=tracer)
            agents = PersonalizedAgents(agent)
            freeze_startup_objects()
            log.info(
                "chat_started",
                llm=llm.provider,
                llm_endpoints=[endpoint.name for endpoint in llm.endpoints] + (["offline"] if llm.offline_fallback else []),
                analytics=settings.analytics_url,
                outbox=outbox.status,
                open_files_limit=open_files,
                admission=settings.admission.enabled,
            )
            yield {
                "settings": settings,
                "metrics": metrics,
                "analytics": analytics,
                "agents": agents,
                "runs": DirectRuns(agent, llm.run_config),
                "llm": llm,
                "outbox": outbox,
                "deliverer": deliverer,
                "rate_limiter": limiter,
                "admission": admission,
                # The server's protocol refuses at the door what the limiter sheds anyway (docs/overload.md).
                "admission_gate": None
                if admission is None
                else ShedGate(
                    admission,
                    routes=ADMITTED_ROUTES,
                    retry_after=settings.admission.retry_after,
                    on_event=admission_metrics.on_event,
                    metrics=metrics,
                    max_body_bytes=settings.max_body_bytes,
                    max_read_wait=settings.admission.max_read_wait,
                ),
                "connection_events": connection_events,
                "authenticator": authenticator,
                "conversations": conversations,
            }
            # In-flight requests are done by now (uvicorn drains them before the lifespan ends).
            # The clients and the outbox are still open here; the stack closes them afterwards.
            await deliverer.flush(settings.shutdown_flush_seconds)
        log.info("chat_stopped")

    app = FastAPI(
        title="DACA Chat Service",
        description="Chat with an agent that knows how many messages you have sent, whatever analytics does.",
        version="0.1.0",
        lifespan=lifespan,
        openapi_tags=TAGS,
        generate_unique_id_function=operation_id,
        docs_url=None,
        redoc_url=None,
    )
    # Innermost first: admission sits inside CORS (a shed answer still carries CORS headers) and
    # inside the request context (it gets a request id, an access line and request metrics).
    app.add_middleware(
        AdmissionMiddleware,
        routes=ADMITTED_ROUTES,
        retry_after=settings.admission.retry_after,
        on_event=admission_metrics.on_event,
    )
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_credentials="*" not in settings.cors_origins,
        allow_methods=["GET", "POST", "DELETE"],
        allow_headers=["Authorization", "Content-Type", "X-Request-ID", "Idempotency-Key"],
    )
    app.add_middleware(RequestContextMiddleware, metrics=metrics, max_body_bytes=settings.max_body_bytes)
    install_error_handlers(app)
    install_offline_docs(app)
    edit_openapi(
        app,
        set_max_length("ChatMessage", "text", settings.max_text_chars),
        *(() if settings.auth_enabled else (without_bearer_scheme,)),
    )
    app.include_router(health.router)
    app.include_router(users.router)
    app.include_router(chat.router)
    app.include_router(conversations.router)
    if tracing is not None:
        tracing.instrument_app(app)
    return app


app = create_app()
