"""One agent run under a whole-run deadline, with every model failure mapped to a clear status."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from agents import Agent, AgentsException
from agents.items import TResponseInputItem
from opentelemetry.trace import Span

from servicekit.logging import get_logger

from .direct_run import DirectRuns
from .model_errors import ModelCallError
from .resilient_model import model_run_scope
from .tools import ChatContext
from .tracing import RunTracing, agent_run_span, record_reply, record_usage

log = get_logger("llm")


class LLMFailure(Exception):
    """The model could not produce a reply; `status` is 502, 503 or 504."""

    def __init__(self, status: int, detail: str, kind: str, retry_after: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Reply:
    """The agent's answer; `offline` when the offline model gave it because no endpoint could."""

    text: str
    offline: bool = False
    items: list[TResponseInputItem] = field(default_factory=list)  # the turn: the user's item, then the run's


async def run_agent(
    agent: Agent[ChatContext],
    text: str,
    context: ChatContext,
    *,
    runs: DirectRuns,
    deadline: float,
    max_turns: int,
    tracing: RunTracing | None = None,
    history: Sequence[TResponseInputItem] = (),
) -> Reply:
    """Run `agent` on `text` after the conversation's `history`; with `tracing`, the run is an
    `invoke_agent` span (see `.tracing`)."""
    if tracing is None:
        return await _run(agent, text, context, runs=runs, deadline=deadline, max_turns=max_turns, history=history)
    with agent_run_span(tracing.tracer, agent.name, tracing.model, text, content=tracing.content) as span:
        reply = await _run(agent, text, context, runs=runs, deadline=deadline, max_turns=max_turns, span=span, history=history)
        span.set_attribute("chat.llm.offline_fallback", reply.offline)
        if tracing.content:
            record_reply(span, reply.text)
        return reply


async def _run(
    agent: Agent[ChatContext],
    text: str,
    context: ChatContext,
    *,
    runs: DirectRuns,
    deadline: float,
    max_turns: int,
    span: Span | None = None,
    history: Sequence[TResponseInputItem] = (),
) -> Reply:
    said: TResponseInputItem = {"role": "user", "content": text}
    try:
        with model_run_scope(deadline) as scope:
            async with asyncio.timeout(deadline):
                given = [*history, said] if history else text
                outcome = await runs.run(agent, given, context, max_turns=max_turns)
    except Exception as error:
        raise as_llm_failure(error) from None
    reply = checked_reply(outcome.final_output)
    if span is not None:
        record_usage(span, outcome.usage)
    items = [said, *outcome.items]
    return Reply(reply, offline=scope.answered_offline, items=items)


def checked_reply(output: object) -> str:
    """The run's final output, if it is a reply a client can use."""
    if not isinstance(output, str) or not output.strip():
        raise LLMFailure(502, "The model gave an empty answer", "empty")
    return output


def as_llm_failure(error: Exception) -> LLMFailure:
    """What a failed run (plain or streamed) means for the client."""
    if isinstance(error, TimeoutError):
        return LLMFailure(504, "The model did not answer in time", "deadline")
    if isinstance(error, ModelCallError):
        retry_after = str(error.retry_after) if error.retry_after is not None else None
        return LLMFailure(error.status, error.detail, error.kind, retry_after)
    if not isinstance(error, AgentsException):
        # A bug, or an SDK failing in a way nobody classified. Keep the traceback in our log,
        # not in the reply.
        log.error("llm_unexpected_error", exc_info=error)
    return LLMFailure(502, "The model gave an answer we cannot use", "invalid")
