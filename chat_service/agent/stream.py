"""One agent run whose reply arrives as it is written: `Runner.run_streamed` under the run's deadline.

The same rules as `run_agent`: the whole run, tools and every model call included, ends by the
deadline (`CHAT_RUN_DEADLINE`), every failure becomes an `LLMFailure`, and the model calls go
through the resilient chain (which retries a stream only before its first event). Cancelling the
consumer, or calling `cancel()`, cancels the run's task and with it the upstream model request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import ExitStack

from agents import Agent, RunConfig, Runner
from agents.items import TResponseInputItem
from agents.result import RunResultStreaming
from agents.stream_events import StreamEvent
from openai.types.responses import ResponseTextDeltaEvent
from opentelemetry.trace import Span, use_span

from .resilient_model import RunScope, model_run_scope
from .run import LLMFailure, Reply, as_llm_failure, checked_reply
from .tools import ChatContext
from .tracing import RunTracing, record_reply, record_usage, start_agent_run_span


class StreamedRun:
    """A running agent; `next_delta()` until it answers None, then `reply` is the whole answer."""

    def __init__(
        self,
        result: RunResultStreaming,
        scope: RunScope,
        deadline_at: float,
        span: Span | None = None,
        *,
        content: bool = False,
        said: TResponseInputItem,
    ) -> None:
        self._result = result
        self._said = said  # the user's item: the first of the turn a conversation stores
        self._content = content
        self._events: AsyncIterator[StreamEvent] = result.stream_events()
        self._scope = scope
        self._deadline_at = deadline_at
        self._span = span
        self._reply: Reply | None = None

    @property
    def reply(self) -> Reply:
        """The final answer; only once `next_delta()` has answered None."""
        assert self._reply is not None, "the run has not finished"
        return self._reply

    async def next_delta(self) -> str | None:
        """The next piece of reply text, or None when the run has completed (then see `reply`)."""
        while True:
            try:
                async with asyncio.timeout_at(self._deadline_at):
                    event = await anext(self._events)
            except StopAsyncIteration:
                self._finish()
                return None
            except Exception as error:
                self.cancel()
                failure = as_llm_failure(error)
                self._end_span(failure.kind)
                raise failure from None
            except BaseException:  # cancelled: the client left, or the server stops
                self.cancel()
                self._end_span("cancelled")
                raise
            if event.type == "raw_response_event" and isinstance(event.data, ResponseTextDeltaEvent) and event.data.delta:
                return event.data.delta

    def _finish(self) -> None:
        try:
            text = checked_reply(self._result.final_output)
        except LLMFailure as failure:
            self._end_span(failure.kind)
            raise
        items = [self._said, *(item.to_input_item() for item in self._result.new_items)]
        self._reply = Reply(text, offline=self._scope.answered_offline, items=items)
        if self._span is not None:
            record_usage(self._span, self._result.context_wrapper.usage)
            self._span.set_attribute("chat.llm.offline_fallback", self._reply.offline)
        self._end_span(None, text)

    def cancel(self) -> None:
        """Stop the run now (idempotent): its task, and the model request it is waiting on, are cancelled."""
        if not self._result.is_complete or (self._result.run_loop_task and not self._result.run_loop_task.done()):
            self._result.cancel()
        self._end_span("cancelled")

    def _end_span(self, error: str | None, reply: str | None = None) -> None:
        span, self._span = self._span, None
        if span is None:
            return
        if error is not None:
            span.set_attribute("error.type", error)
        elif reply is not None and self._content:
            record_reply(span, reply)
        span.end()


def stream_agent(
    agent: Agent[ChatContext],
    text: str,
    context: ChatContext,
    *,
    run_config: RunConfig,
    deadline: float,
    max_turns: int,
    tracing: RunTracing | None = None,
    history: Sequence[TResponseInputItem] = (),
) -> StreamedRun:
    """Start `agent` on `text` after the conversation's `history`; its model calls stream.
    The deadline counts from now; the finished run's `reply.items` is the turn to store."""
    said: TResponseInputItem = {"role": "user", "content": text}
    given = [*history, said] if history else text
    deadline_at = asyncio.get_running_loop().time() + deadline
    span: Span | None = None
    with ExitStack() as stack:
        if tracing is not None:
            # Started here and ended by the StreamedRun; current only while the run's task is
            # created, which copies this context: its model calls and tools become children.
            span = start_agent_run_span(tracing.tracer, agent.name, tracing.model, text, content=tracing.content)
            span.set_attribute("gen_ai.request.stream", True)
            stack.enter_context(use_span(span, end_on_exit=False))
        scope = stack.enter_context(model_run_scope(deadline))
        result = Runner.run_streamed(agent, input=given, context=context, run_config=run_config, max_turns=max_turns)
    return StreamedRun(result, scope, deadline_at, span, content=tracing is not None and tracing.content, said=said)
