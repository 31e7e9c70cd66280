"""The model the agent runs on: a fallback chain of resilient endpoints behind the SDK's `Model`.

Each model call (one per agent turn) tries the endpoints in order; an endpoint is skipped when it
fails (after its own retries), when its breaker is open or when it is at its concurrency limit.
The offline model may close the chain as a last resort. When nothing answers, the call raises a
`ModelCallError` whose status says why: 503 (with Retry-After) for outages and rate limits, 504
for timeouts, 502 for answers we cannot use. Every call is bounded by the time the agent run has
left (`model_run_scope`), and the SDK's Runner, tools and sessions work unchanged on top.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass

from agents import Model, ModelResponse, ModelSettings, ModelTracing, Tool
from agents.agent_output import AgentOutputSchemaBase
from agents.handoffs import Handoff
from agents.items import TResponseInputItem, TResponseStreamEvent
from openai.types.responses.response_prompt_param import ResponsePromptParam

from resilience import Fallback, Ok
from servicekit.logging import get_logger

from .endpoint import CallObserver, ModelEndpoint, ModelRequest
from .model_errors import (
    ModelBadAnswer,
    ModelCallError,
    ModelStreamInterrupted,
    ModelTimeout,
    ModelUnavailable,
    classify_model_error,
)

log = get_logger("llm")

OFFLINE_ENDPOINT = "offline"


@dataclass(slots=True)
class RunScope:
    """One agent run, as its model calls see it: when it must end, and who answered."""

    deadline: float
    answered_offline: bool = False

    def time_left(self) -> float:
        return self.deadline - time.monotonic()


_current_run: ContextVar[RunScope | None] = ContextVar("model_run_scope", default=None)


@contextlib.contextmanager
def model_run_scope(seconds: float) -> Iterator[RunScope]:
    """Bound every model call made inside (in this task and tasks it starts) to `seconds` from now."""
    scope = RunScope(deadline=time.monotonic() + seconds)
    token = _current_run.set(scope)
    try:
        yield scope
    finally:
        _current_run.reset(token)


def _verdict(fallback: Fallback) -> str:
    """What one endpoint's failure says: timeout, bad (answer), rate_limited or unavailable."""
    if fallback.reason in ("breaker_open", "bulkhead_full"):
        return "unavailable"
    failure = classify_model_error(fallback.error) if fallback.error is not None else None
    if failure is None:
        return "timeout" if fallback.reason == "deadline" else "unavailable"
    if failure.reason == "timeout":
        return "timeout"
    if not failure.transient:
        return "bad"
    return "rate_limited" if failure.status == 429 else "unavailable"


def _seconds_until_usable(endpoint: ModelEndpoint, fallback: Fallback) -> float:
    breaker = endpoint.pipeline.breaker
    if breaker.state == "open":
        return breaker.remaining_open
    failure = classify_model_error(fallback.error) if fallback.error is not None else None
    if failure is not None and failure.retry_after is not None:
        return failure.retry_after
    return 1.0


def give_up(failures: Sequence[tuple[ModelEndpoint, Fallback]]) -> ModelCallError:
    """The error for a call no endpoint answered: 504 if one timed out, 502 for bad answers, else 503."""
    verdicts = {_verdict(fallback) for _, fallback in failures}
    if not failures or "timeout" in verdicts:
        return ModelTimeout()
    if "bad" in verdicts:
        return ModelBadAnswer()
    wait = min(_seconds_until_usable(endpoint, fallback) for endpoint, fallback in failures)
    retry_after = max(1, math.ceil(wait))
    if "rate_limited" in verdicts:
        return ModelUnavailable(retry_after=retry_after, kind="rate_limited", detail="The model provider is rate limiting us")
    return ModelUnavailable(retry_after=retry_after)


def _log_failure(endpoint: ModelEndpoint, fallback: Fallback) -> None:
    if fallback.error is None:  # open breaker, full limit: nothing new to say, and it is frequent
        log.debug("llm_endpoint_skipped", endpoint=endpoint.name, reason=fallback.reason)
        return
    # The provider's own words stay in our log: they never reach a client.
    log.warning(
        "llm_endpoint_failed",
        endpoint=endpoint.name,
        reason=fallback.reason,
        status=fallback.status,
        attempts=fallback.attempts,
        error=type(fallback.error).__name__,
        provider_said=str(fallback.error)[:500],
    )


class ResilientModel(Model):
    """The endpoints in order, each through its own pipeline; `last_resort` answers when none can."""

    def __init__(self, endpoints: Sequence[ModelEndpoint], *, observer: CallObserver, last_resort: Model | None = None) -> None:
        self.endpoints = tuple(endpoints)
        self.last_resort = last_resort
        self._observer = observer

    async def get_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None = None,
        conversation_id: str | None = None,
        prompt: ResponsePromptParam | None = None,
    ) -> ModelResponse:
        request = ModelRequest(
            system_instructions,
            input,
            model_settings,
            tools,
            output_schema,
            handoffs,
            tracing,
            previous_response_id,
            conversation_id,
            prompt,
        )
        scope = _current_run.get()
        failures: list[tuple[ModelEndpoint, Fallback]] = []
        for endpoint in self.endpoints:
            seconds = scope.time_left() if scope is not None else None
            if seconds is not None and seconds <= 0:
                break
            outcome = await endpoint.respond(request, seconds)
            if isinstance(outcome, Ok):
                return outcome.value
            _log_failure(endpoint, outcome)
            failures.append((endpoint, outcome))
        if self.last_resort is None:
            raise give_up(failures)
        started = time.perf_counter()
        response = await request.send(self.last_resort)
        self._answered_offline(scope, started)
        return response

    async def stream_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None = None,
        conversation_id: str | None = None,
        prompt: ResponsePromptParam | None = None,
    ) -> AsyncIterator[TResponseStreamEvent]:
        """An attempt opens the stream and receives its first event; after that, no retry, no fallback.

        A failure once events have been yielded raises `ModelStreamInterrupted`.
        """
        request = ModelRequest(
            system_instructions,
            input,
            model_settings,
            tools,
            output_schema,
            handoffs,
            tracing,
            previous_response_id,
            conversation_id,
            prompt,
        )
        scope = _current_run.get()
        failures: list[tuple[ModelEndpoint, Fallback]] = []
        for endpoint in self.endpoints:
            seconds = scope.time_left() if scope is not None else None
            if seconds is not None and seconds <= 0:
                break
            outcome = await endpoint.open_stream(request, seconds)
            if isinstance(outcome, Fallback):
                _log_failure(endpoint, outcome)
                failures.append((endpoint, outcome))
                continue
            opened = outcome.value
            try:
                async for event in opened.events():
                    yield event
            except Exception as error:
                interrupted = _interrupted(endpoint, error)
                if interrupted is None:
                    raise  # a bug, not a provider failure: unchanged
                raise interrupted from error
            finally:
                await opened.close()
            return
        if self.last_resort is None:
            raise give_up(failures)
        started = time.perf_counter()
        async for event in request.stream(self.last_resort):
            yield event
        self._answered_offline(scope, started)

    def _answered_offline(self, scope: RunScope | None, started: float) -> None:
        if scope is not None:
            scope.answered_offline = True
        self._observer.model_call(OFFLINE_ENDPOINT, "ok", time.perf_counter() - started)
        log.warning("llm_offline_fallback", endpoints=[e.name for e in self.endpoints])


def _interrupted(endpoint: ModelEndpoint, error: Exception) -> ModelStreamInterrupted | None:
    failure = classify_model_error(error)
    if failure is None:
        return None
    log.warning(
        "llm_stream_interrupted",
        endpoint=endpoint.name,
        reason=failure.reason,
        status=failure.status,
        error=type(error).__name__,
        provider_said=str(error)[:500],
    )
    if failure.reason == "timeout":
        return ModelStreamInterrupted(status=504, kind="interrupted_timeout", detail="The model stream stalled")
    return ModelStreamInterrupted()
