"""POST /chat/: the tutorial's endpoint, made safe under concurrency and failure."""

from __future__ import annotations

import sqlite3
import time
import uuid

import structlog
from fastapi import APIRouter, HTTPException, Request

from servicekit.admission import commit_reply
from servicekit.logging import get_logger

from ..agent.run import LLMFailure, run_agent
from ..agent.tools import ChatContext
from ..analytics_client import RecordItem
from ..models import Message, Metadata, Response
from ..outbox import OutboxFull
from .deps import AgentsDep, AnalyticsDep, DelivererDep, LLMDep, MetricsDep, OutboxDep, RateLimiterDep, SettingsDep

router = APIRouter()
log = get_logger("chat")


def _error(description: str) -> dict[str, object]:
    return {"description": description, "content": {"application/json": {"example": {"detail": description}}}}


ERRORS: dict[int | str, dict[str, object]] = {
    400: _error("Message text cannot be empty"),
    413: _error("Request body too large"),
    429: _error("Too many messages; retry after the Retry-After seconds"),
    502: _error("The model gave an answer we cannot use"),
    503: _error("The model provider, or the local outbox, is unavailable"),
    504: _error("The model did not answer in time"),
}


def _text_too_long(limit: int) -> HTTPException:
    return HTTPException(
        422, [{"loc": ["body", "text"], "msg": f"String should have at most {limit} characters", "type": "string_too_long"}]
    )


@router.post("/chat/", response_model=Response, responses=ERRORS)
async def chat(
    request: Request,
    message: Message,
    settings: SettingsDep,
    analytics: AnalyticsDep,
    agents: AgentsDep,
    llm: LLMDep,
    outbox: OutboxDep,
    deliverer: DelivererDep,
    metrics: MetricsDep,
    limiter: RateLimiterDep,
) -> Response:
    """Answer a message, personalized with how many messages the user sent before it."""
    if not message.text.strip():
        raise HTTPException(400, "Message text cannot be empty")
    if len(message.text) > settings.max_text_chars:
        raise _text_too_long(settings.max_text_chars)
    structlog.contextvars.bind_contextvars(user_id=message.user_id)
    if limiter is not None:
        decision = await limiter.hit(message.user_id)
        if not decision.allowed:
            raise HTTPException(429, "Too many messages", headers={"Retry-After": str(decision.retry_after)})

    count = await analytics.message_count(message.user_id)
    metrics.analytics_calls.labels("read", count.fallback or "ok").inc()
    if count.fallback is not None:
        log.info("analytics_fallback", reason=count.fallback, message_count=0)

    started = time.perf_counter()
    try:
        reply = await run_agent(
            agents.for_count(count.value),
            message.text,
            ChatContext(message.user_id, analytics),
            run_config=llm.run_config,
            deadline=settings.run_deadline,
            max_turns=settings.max_turns,
        )
    except LLMFailure as failure:
        metrics.llm_errors.labels(failure.kind).inc()
        log.warning("llm_failed", kind=failure.kind, status=failure.status)
        headers = {"Retry-After": failure.retry_after} if failure.retry_after else None
        raise HTTPException(failure.status, failure.detail, headers=headers) from None
    finally:
        metrics.llm_latency.observe(time.perf_counter() - started)

    commit_reply(request)  # from here the reply is recorded and sent, even if the client leaves
    try:
        outbox.append(RecordItem(message.user_id, uuid.uuid4().hex, message.metadata.timestamp.isoformat()))
    except (OutboxFull, sqlite3.Error) as error:
        log.error("outbox_refused", error=type(error).__name__)
        raise HTTPException(503, "Cannot record the message right now", headers={"Retry-After": "1"}) from None
    deliverer.notify()
    return Response(user_id=message.user_id, reply=reply, metadata=Metadata(session_id=message.metadata.session_id))
