"""The steps every chat route shares: the checks before the agent runs and the recording after it.

`POST /chat/` and `POST /chat/stream` differ only in how the run's reply reaches the client:

    turns.check(message, caller)                # auth, text
    turn = await turns.begin(message)           # outbox, rate limit, count
    reply = await turns.run(turn)                         # or turns.stream(turn), step by step
    answer = await turns.record(request, turn, reply)     # commit, outbox, deliverer, metrics
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from agents import Agent
from agents.items import TResponseInputItem
from fastapi import HTTPException, Request

from servicekit.admission import commit_reply
from servicekit.logging import get_logger

from ..agent.agent import PersonalizedAgents
from ..agent.direct_run import DirectRuns
from ..agent.llm import LLM
from ..agent.run import LLMFailure, Reply, run_agent
from ..agent.stream import StreamedRun, stream_agent
from ..agent.tools import ChatContext
from ..analytics_client import AnalyticsClient, RecordItem
from ..auth import Caller
from ..core.config import Settings
from ..core.metrics import ChatMetrics
from ..delivery import Deliverer
from ..models import ChatMessage, ChatReply, ReplyMetadata, is_blank
from ..outbox import Outbox, OutboxRefused
from ..rate_limit import RateLimiter
from ..sessions import Conversations
from .auth import acting_user

log = get_logger("chat")


@dataclass(slots=True)
class Turn:
    """One message on its way through a chat route, once the checks have let it in."""

    message: ChatMessage
    agent: Agent[ChatContext]  # personalized with the user's count
    context: ChatContext
    started: float = 0.0  # when the run started (perf_counter), for the run-latency metric


def _text_too_long(limit: int) -> HTTPException:
    return HTTPException(
        422, [{"loc": ["body", "text"], "msg": f"String should have at most {limit} characters", "type": "string_too_long"}]
    )


class ChatTurns:
    """What a chat turn needs from the lifespan, and the steps around its run."""

    __slots__ = ("agents", "analytics", "conversations", "deliverer", "limiter", "llm", "metrics", "outbox", "runs", "settings")

    def __init__(self, request: Request) -> None:
        # One dependency instead of one per resource: FastAPI resolves each dependency per request
        # (~6 us each for the chat route, measured).
        state = request.state
        self.settings: Settings = state.settings
        self.metrics: ChatMetrics = state.metrics
        self.analytics: AnalyticsClient = state.analytics
        self.agents: PersonalizedAgents = state.agents
        self.runs: DirectRuns = state.runs
        self.llm: LLM = state.llm
        self.outbox: Outbox = state.outbox
        self.deliverer: Deliverer = state.deliverer
        self.limiter: RateLimiter | None = state.rate_limiter
        self.conversations: Conversations = state.conversations

    def check(self, message: ChatMessage, caller: Caller | None) -> None:
        """Who may send it and whether it can be answered at all; each refusal is an HTTPException."""
        user_id = acting_user(caller, message.user_id)
        if is_blank(message.text):
            raise HTTPException(400, "Message text cannot be empty")
        if len(message.text) > self.settings.max_text_chars:
            raise _text_too_long(self.settings.max_text_chars)
        structlog.contextvars.bind_contextvars(user_id=user_id)

    async def begin(self, message: ChatMessage) -> Turn:
        """The checks before any model time is spent (after `check`, and after a keyed retry's
        stored reply was looked for: a replay spends none of them); each refusal is an HTTPException."""
        user_id = message.user_id
        if not self.outbox.accepting:  # refuse before the model runs: its answer could not be recorded
            raise self.outbox_refused(self.outbox.reason)
        if self.limiter is not None:
            decision = await self.limiter.hit(user_id)
            if not decision.allowed:
                raise HTTPException(429, "Too many messages", headers={"Retry-After": str(decision.retry_after)})

        # A chat returns to the event loop after its parsing and checks, and again before its
        # run (chat.py): with the analytics read and the outbox's append, which wait anyway, its
        # CPU (~1.2-1.8 ms) comes in five slices of at most ~0.35 ms instead of three of up to
        # 0.9 ms. A request refused at the door waits for the loop's current pass, and with
        # 10-30 chats in flight a pass made of whole slices was 5-15 ms: shorter slices keep
        # refusals fast with more in flight (docs/overload.md, stop 27).
        await asyncio.sleep(0)
        count = await self.analytics.message_count(message.user_id)
        self.metrics.analytics_calls.labels("read", count.fallback or "ok").inc()
        if count.fallback is not None:
            log.info("analytics_fallback", reason=count.fallback, message_count=0)
        return Turn(message, self.agents.for_count(count.value), ChatContext(message.user_id, self.analytics))

    async def run(self, turn: Turn, history: Sequence[TResponseInputItem] = ()) -> Reply:
        """The whole run after the conversation's `history`, then its reply; a failure is an
        HTTPException with the status it deserves."""
        started = time.perf_counter()
        try:
            return await run_agent(
                turn.agent,
                turn.message.text,
                turn.context,
                runs=self.runs,
                deadline=self.settings.run_deadline,
                max_turns=self.settings.max_turns,
                tracing=self.llm.tracing,
                history=history,
            )
        except LLMFailure as failure:
            raise self.failed(failure) from None
        finally:
            self.metrics.llm_latency.observe(time.perf_counter() - started)

    def stream(self, turn: Turn, history: Sequence[TResponseInputItem] = ()) -> StreamedRun:
        """Start the run after the conversation's `history`, with streaming model calls; read it
        with `StreamedRun.next_delta()`."""
        turn.started = time.perf_counter()
        return stream_agent(
            turn.agent,
            turn.message.text,
            turn.context,
            run_config=self.llm.run_config,
            deadline=self.settings.run_deadline,
            max_turns=self.settings.max_turns,
            tracing=self.llm.tracing,
            history=history,
        )

    def stream_ended(self, turn: Turn) -> None:
        """A streamed run is over (answered, failed or cancelled): the run-latency metric."""
        self.metrics.llm_latency.observe(time.perf_counter() - turn.started)

    def failed(self, failure: LLMFailure) -> HTTPException:
        """Count and log a failed run; the error the client gets."""
        self.metrics.llm_errors.labels(failure.kind).inc()
        log.warning("llm_failed", kind=failure.kind, status=failure.status)
        headers = {"Retry-After": failure.retry_after} if failure.retry_after else None
        return HTTPException(failure.status, failure.detail, headers=headers)

    async def record(self, request: Request, turn: Turn, reply: Reply, record_id: str | None = None) -> ChatReply:
        """Make the reply permanent (the outbox has it) and build the answer.

        `record_id` is the analytics record's id: one derived from an Idempotency-Key, so that a
        retry that reaches another replica is counted once; a fresh one otherwise.

        Raises `ClientGone` (the client left: nothing recorded) or a 503 HTTPException.
        """
        message = turn.message
        commit_reply(request)  # from here the reply is recorded and sent, even if the client leaves
        try:
            record = RecordItem(message.user_id, record_id or uuid.uuid4().hex, message.metadata.timestamp.isoformat())
            await self.outbox.append(record)
        except OutboxRefused as refused:
            raise self.outbox_refused(refused.reason) from None
        self.deliverer.notify()
        if reply.offline:
            self.metrics.llm_offline_replies.inc()
        metadata = ReplyMetadata(session_id=message.metadata.session_id, fallback="offline" if reply.offline else None)
        return ChatReply(user_id=message.user_id, reply=reply.text, metadata=metadata)

    def outbox_refused(self, reason: str) -> HTTPException:
        self.metrics.outbox_refused.labels(reason).inc()
        # every refusal is counted; the log gets one line per reason every 5 s (a full or stalled
        # disk refuses thousands a second), with how many it left out
        held_back = self.outbox.refusals_logged.allow(reason)
        if held_back is not None:
            log.error("outbox_refused", reason=reason, refused_since_last_line=held_back)
        return HTTPException(503, "Cannot record the message right now", headers={"Retry-After": "1"})
