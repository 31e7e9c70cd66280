"""One model endpoint: its own client, concurrency limit and resilience pipeline.

Order, outermost first: concurrency limit (fail fast when full; held by a stream until it ends)
-> the pipeline (retries within the budget, breaker, the call's deadline) -> per-attempt
timeout -> the Agents SDK model on its own `AsyncOpenAI` client (whose own retries are off).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from agents import Model, ModelResponse, ModelSettings, ModelTracing, Tool
from agents.agent_output import AgentOutputSchemaBase
from agents.handoffs import Handoff
from agents.items import TResponseInputItem, TResponseStreamEvent
from openai.types.responses.response_prompt_param import ResponsePromptParam
from opentelemetry.trace import Span, Tracer, use_span

from resilience import Bulkhead, Fallback, InvalidResponseError, Ok, Outcome, Pipeline

from .tracing import end_model_call, model_call_span


class CallObserver(Protocol):
    """Told about every endpoint call (metrics); `outcome` is "ok" or the fallback's label."""

    def model_call(self, endpoint: str, outcome: str, seconds: float) -> None: ...

    def model_tokens(self, endpoint: str, input_tokens: int, output_tokens: int) -> None: ...

    def model_in_flight(self, endpoint: str, calls: int) -> None: ...


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """The arguments of one `Model.get_response`/`stream_response` call, to replay on any endpoint."""

    system_instructions: str | None
    input: str | list[TResponseInputItem]
    model_settings: ModelSettings
    tools: list[Tool]
    output_schema: AgentOutputSchemaBase | None
    handoffs: list[Handoff]
    tracing: ModelTracing
    previous_response_id: str | None
    conversation_id: str | None
    prompt: ResponsePromptParam | None

    async def send(self, model: Model) -> ModelResponse:
        return await model.get_response(
            self.system_instructions,
            self.input,
            self.model_settings,
            self.tools,
            self.output_schema,
            self.handoffs,
            self.tracing,
            previous_response_id=self.previous_response_id,
            conversation_id=self.conversation_id,
            prompt=self.prompt,
        )

    def stream(self, model: Model) -> AsyncIterator[TResponseStreamEvent]:
        return model.stream_response(
            self.system_instructions,
            self.input,
            self.model_settings,
            self.tools,
            self.output_schema,
            self.handoffs,
            self.tracing,
            previous_response_id=self.previous_response_id,
            conversation_id=self.conversation_id,
            prompt=self.prompt,
        )


def _is_empty(output: list[Any]) -> bool:
    """No tool call and no visible text: a reply nobody can use."""
    for item in output:
        if getattr(item, "type", None) != "message":
            return False
        for part in getattr(item, "content", None) or ():
            if (getattr(part, "text", None) or getattr(part, "refusal", None) or "").strip():
                return False
    return True


def outcome_label(outcome: Outcome[Any]) -> str:
    if isinstance(outcome, Ok):
        return "ok"
    if outcome.reason == "status" and outcome.status is not None:
        return f"status_{outcome.status}"
    return outcome.reason


class OpenedStream:
    """A stream whose first event arrived; it holds its endpoint's concurrency slot until closed."""

    def __init__(self, endpoint: ModelEndpoint, first: TResponseStreamEvent, rest: AsyncIterator[TResponseStreamEvent]) -> None:
        self.endpoint = endpoint
        self.first = first
        self.rest = rest
        self._open = True
        self.span: Span | None = None  # the model call's span (tracing on): it ends with the stream
        self._tokens: tuple[int, int] | None = None

    async def events(self) -> AsyncIterator[TResponseStreamEvent]:
        self._count_tokens(self.first)
        yield self.first
        async for event in self.rest:
            self._count_tokens(event)
            yield event

    def _count_tokens(self, event: TResponseStreamEvent) -> None:
        if event.type == "response.completed" and event.response.usage is not None:
            usage = event.response.usage
            self.endpoint.observer.model_tokens(self.endpoint.name, usage.input_tokens, usage.output_tokens)
            self._tokens = (usage.input_tokens, usage.output_tokens)

    async def close(self) -> None:
        if self._open:
            self._open = False
            self.endpoint.leave()
            await _aclose(self.rest)
            if self.span is not None:
                end_model_call(self.span, "ok", *(self._tokens or (None, None)))


async def _aclose(stream: AsyncIterator[Any]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


class ModelEndpoint:
    """An OpenAI-compatible endpoint behind its own concurrency limit and pipeline.

    With a `tracer`, each call is a `chat <model_name>` span (see `.tracing`) above the pipeline's.
    """

    def __init__(
        self,
        name: str,
        model: Model,
        pipeline: Pipeline,
        *,
        max_concurrency: int,
        attempt_timeout: float,
        observer: CallObserver,
        model_name: str = "",
        tracer: Tracer | None = None,
    ) -> None:
        self.name = name
        self.model = model
        self.model_name = model_name
        self.pipeline = pipeline
        self.limit = Bulkhead(max_concurrency)
        self.attempt_timeout = attempt_timeout
        self.observer = observer
        self.tracer = tracer

    def enter(self) -> bool:
        """Take a concurrency slot, if one is free; the observer sees the calls in flight."""
        if not self.limit.try_enter():
            return False
        self.observer.model_in_flight(self.name, self.limit.in_flight)
        return True

    def leave(self) -> None:
        self.limit.leave()
        self.observer.model_in_flight(self.name, self.limit.in_flight)

    async def respond(self, request: ModelRequest, seconds: float | None) -> Outcome[ModelResponse]:
        """One model call, retried within the policy; `seconds` is the time the run has left."""
        if self.tracer is None:
            return await self._respond(request, seconds)
        span = model_call_span(self.tracer, self.model_name, self.name)
        try:
            with use_span(span, record_exception=False, set_status_on_exception=False):
                outcome = await self._respond(request, seconds)
        except BaseException as error:
            end_model_call(span, type(error).__name__)
            raise
        usage = outcome.value.usage if isinstance(outcome, Ok) else None
        end_model_call(span, outcome_label(outcome), *((usage.input_tokens, usage.output_tokens) if usage else (None, None)))
        return outcome

    async def _respond(self, request: ModelRequest, seconds: float | None) -> Outcome[ModelResponse]:
        if not self.enter():
            self.observer.model_call(self.name, "bulkhead_full", 0.0)
            return Fallback("bulkhead_full")
        started = time.perf_counter()
        try:
            outcome = await self.pipeline.call(lambda remaining: self._respond_once(request, remaining), deadline=seconds)
        finally:
            self.leave()
        self.observer.model_call(self.name, outcome_label(outcome), time.perf_counter() - started)
        if isinstance(outcome, Ok):
            usage = outcome.value.usage
            self.observer.model_tokens(self.name, usage.input_tokens, usage.output_tokens)
        return outcome

    async def _respond_once(self, request: ModelRequest, remaining: float) -> ModelResponse:
        async with asyncio.timeout(min(self.attempt_timeout, remaining)):
            response = await request.send(self.model)
        if _is_empty(response.output):
            raise InvalidResponseError("the model gave an empty reply")
        return response

    async def open_stream(self, request: ModelRequest, seconds: float | None) -> Outcome[OpenedStream]:
        """Open a stream and receive its first event, retried within the policy like a call.

        On success the stream holds a concurrency slot until `OpenedStream.close()`, and its
        span (tracing on) lasts until then too.
        """
        if self.tracer is None:
            return await self._open_stream(request, seconds)
        span = model_call_span(self.tracer, self.model_name, self.name)
        span.set_attribute("gen_ai.request.stream", True)
        try:
            with use_span(span, record_exception=False, set_status_on_exception=False):
                outcome = await self._open_stream(request, seconds)
        except BaseException as error:
            end_model_call(span, type(error).__name__)
            raise
        if isinstance(outcome, Ok):
            outcome.value.span = span
        else:
            end_model_call(span, outcome_label(outcome))
        return outcome

    async def _open_stream(self, request: ModelRequest, seconds: float | None) -> Outcome[OpenedStream]:
        if not self.enter():
            self.observer.model_call(self.name, "bulkhead_full", 0.0)
            return Fallback("bulkhead_full")
        started = time.perf_counter()
        try:
            outcome = await self.pipeline.call(lambda remaining: self._open_once(request, remaining), deadline=seconds)
        except BaseException:
            self.leave()
            raise
        if isinstance(outcome, Fallback):
            self.leave()
        self.observer.model_call(self.name, outcome_label(outcome), time.perf_counter() - started)
        return outcome

    async def _open_once(self, request: ModelRequest, remaining: float) -> OpenedStream:
        stream = request.stream(self.model)
        try:
            async with asyncio.timeout(min(self.attempt_timeout, remaining)):
                first = await anext(stream)
        except StopAsyncIteration:
            raise InvalidResponseError("the model stream ended before its first event") from None
        except BaseException:
            await _aclose(stream)
            raise
        if first.type == "response.completed" and _is_empty(first.response.output):
            await _aclose(stream)
            raise InvalidResponseError("the model stream was empty")
        return OpenedStream(self, first, stream)
