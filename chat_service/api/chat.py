"""POST /chat/ (and /chat): the tutorial's endpoint, made safe under concurrency and failure."""

from __future__ import annotations

import time
import uuid

import structlog
from fastapi import APIRouter, HTTPException, Request

from servicekit.admission import commit_reply
from servicekit.logging import get_logger
from servicekit.openapi import IdempotencyKey, responses

from ..agent.run import LLMFailure, run_agent
from ..agent.tools import ChatContext
from ..analytics_client import RecordItem
from ..core.metrics import ChatMetrics
from ..models import ChatMessage, ChatReply, ReplyMetadata
from ..outbox import OutboxRefused
from ..sessions import idempotency
from .auth import AUTH_DESCRIPTIONS, CallerDep, acting_user
from .deps import (
    AgentsDep,
    AnalyticsDep,
    ConversationsDep,
    DelivererDep,
    LLMDep,
    MetricsDep,
    OutboxDep,
    RateLimiterDep,
    SettingsDep,
)

router = APIRouter(tags=["chat"])
log = get_logger("chat")

ERRORS = responses(
    *(400, 401, 403, 409, 413, 422, 429, 502, 503, 504),
    descriptions={
        **AUTH_DESCRIPTIONS,
        400: "The message text is blank",
        409: "The conversation is answering another message (waited CHAT_SESSION_LOCK_WAIT), "
        "or a request with this Idempotency-Key is still running",
        422: "The body is invalid, or this Idempotency-Key was used with a different body",
        429: "Too many messages from this user (CHAT_RATE_LIMIT_PER_MINUTE); retry after Retry-After",
        502: "The model gave an answer we cannot use",
        503: "The model provider, the local outbox, or the identity provider's keys are unavailable; "
        "retry after Retry-After when given",
        504: "The model did not answer within CHAT_RUN_DEADLINE",
    },
)


def _text_too_long(limit: int) -> HTTPException:
    return HTTPException(
        422, [{"loc": ["body", "text"], "msg": f"String should have at most {limit} characters", "type": "string_too_long"}]
    )


def _outbox_refused(reason: str, metrics: ChatMetrics) -> HTTPException:
    metrics.outbox_refused.labels(reason).inc()
    log.error("outbox_refused", reason=reason)
    return HTTPException(503, "Cannot record the message right now", headers={"Retry-After": "1"})


@router.post(
    "/chat/", response_model=ChatReply, response_model_exclude_none=True, summary="Chat with the agent", responses=ERRORS
)
# The same, without the slash (no redirect). `fallback` appears in a reply's metadata only when set.
@router.post("/chat", response_model=ChatReply, response_model_exclude_none=True, include_in_schema=False)
async def chat(
    request: Request,
    message: ChatMessage,
    caller: CallerDep,
    settings: SettingsDep,
    analytics: AnalyticsDep,
    agents: AgentsDep,
    llm: LLMDep,
    outbox: OutboxDep,
    deliverer: DelivererDep,
    metrics: MetricsDep,
    limiter: RateLimiterDep,
    conversations: ConversationsDep,
    idempotency_key: IdempotencyKey = None,
) -> ChatReply:
    """Answer a message in its conversation, personalized with how many messages the user sent."""
    user_id = acting_user(caller, message.user_id)
    if not message.text.strip():
        raise HTTPException(400, "Message text cannot be empty")
    if len(message.text) > settings.max_text_chars:
        raise _text_too_long(settings.max_text_chars)
    structlog.contextvars.bind_contextvars(user_id=user_id)
    if not outbox.accepting:  # refuse before the model runs: its answer could not be recorded
        raise _outbox_refused(outbox.reason, metrics)
    if limiter is not None:
        decision = await limiter.hit(user_id)
        if not decision.allowed:
            raise HTTPException(429, "Too many messages", headers={"Retry-After": str(decision.retry_after)})

    # A retry of a keyed request answers the stored reply: no model run, no second record.
    claim = await idempotency.begin(conversations, user_id, idempotency_key, message.model_dump(mode="json", exclude_unset=True))
    if claim.replay is not None:
        return ChatReply.model_validate_json(claim.replay)
    # One run at a time per conversation; the turn is stored only if the reply completes.
    async with claim, conversations.turn(user_id, message.metadata.session_id) as turn:
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
                tracing=llm.tracing,
                history=turn.history,
            )
        except LLMFailure as failure:
            metrics.llm_errors.labels(failure.kind).inc()
            log.warning("llm_failed", kind=failure.kind, status=failure.status)
            headers = {"Retry-After": failure.retry_after} if failure.retry_after else None
            raise HTTPException(failure.status, failure.detail, headers=headers) from None
        finally:
            metrics.llm_latency.observe(time.perf_counter() - started)

        commit_reply(request)  # from here the reply is recorded and sent, even if the client leaves
        # A keyed chat's record id comes from its key: a retry that reaches another replica is counted once.
        record_id = claim.record_id or uuid.uuid4().hex
        try:
            await outbox.append(RecordItem(message.user_id, record_id, message.metadata.timestamp.isoformat()))
        except OutboxRefused as refused:
            raise _outbox_refused(refused.reason, metrics) from None
        deliverer.notify()
        if reply.offline:
            metrics.llm_offline_replies.inc()
        metadata = ReplyMetadata(session_id=message.metadata.session_id, fallback="offline" if reply.offline else None)
        answer = ChatReply(user_id=message.user_id, reply=reply.text, metadata=metadata)
        await turn.complete(reply.items)
        await claim.finish(answer.model_dump_json(exclude_none=True))
    return answer
