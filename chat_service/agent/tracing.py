"""OpenTelemetry spans for the agent run, its model calls and its tools (GenAI semantic conventions).

Made by our own code, not bridged from the Agents SDK's tracing: the SDK's tracing stays off
unless CHAT_TRACING_ENABLED (and then exports only to OpenAI), and nothing here depends on it.
Every function takes the tracer the lifespan made, or None when tracing is off: then no span,
no attribute and no wrapper exist.

- `invoke_agent <agent>`: the whole run; `gen_ai.operation.name`, `gen_ai.agent.name`,
  `gen_ai.request.model`, `gen_ai.provider.name`, and the run's `gen_ai.usage.input_tokens` /
  `output_tokens` (all turns).
- `chat <model>`: one model call to one endpoint (the resilience pipeline's span is its child,
  the HTTP request below that); the endpoint's name (`chat.llm.endpoint`), the tokens it used,
  and `chat.llm.outcome` ("ok" or why it did not answer).
- `execute_tool <tool>`: each tool call; `gen_ai.tool.name`.

Message text and replies are never attributes unless `CHAT_TRACE_CONTENT=true`
(`gen_ai.input.messages`, `gen_ai.output.messages`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from agents import Usage
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer, use_span

P = ParamSpec("P")
R = TypeVar("R")

PROVIDER = "openai"  # any OpenAI-compatible endpoint speaks OpenAI's API


@dataclass(frozen=True, slots=True)
class RunTracing:
    """What an agent run's span needs: the tracer, the model asked for, whether text may be recorded."""

    tracer: Tracer
    model: str
    content: bool = False


@contextmanager
def agent_run_span(tracer: Tracer, agent_name: str, model: str, text: str, *, content: bool) -> Iterator[Span]:
    """The span of one agent run; `record_usage` adds the tokens it used when it ends well."""
    span = start_agent_run_span(tracer, agent_name, model, text, content=content)
    with use_span(span, end_on_exit=True):
        yield span


def start_agent_run_span(tracer: Tracer, agent_name: str, model: str, text: str, *, content: bool) -> Span:
    """The same span, started but not made current, for a run that outlives one block (a stream)."""
    attributes: dict[str, str] = {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": agent_name,
        "gen_ai.request.model": model,
        "gen_ai.provider.name": PROVIDER,
    }
    if content:
        attributes["gen_ai.input.messages"] = json.dumps([{"role": "user", "parts": [{"type": "text", "content": text}]}])
    return tracer.start_span(f"invoke_agent {agent_name}", kind=SpanKind.INTERNAL, attributes=attributes)


def record_usage(span: Span, usage: Usage) -> None:
    """The tokens of every turn of the run."""
    span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)


def record_reply(span: Span, reply: str) -> None:
    """The reply's text (only with CHAT_TRACE_CONTENT=true)."""
    message = [{"role": "assistant", "parts": [{"type": "text", "content": reply}]}]
    span.set_attribute("gen_ai.output.messages", json.dumps(message))


def model_call_span(tracer: Tracer, model: str, endpoint: str) -> Span:
    """A model call's span, started but not current: the caller makes it current and ends it."""
    return tracer.start_span(
        f"chat {model}",
        kind=SpanKind.CLIENT,
        attributes={
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": model,
            "gen_ai.provider.name": PROVIDER,
            "chat.llm.endpoint": endpoint,
        },
    )


def end_model_call(span: Span, outcome: str, input_tokens: int | None = None, output_tokens: int | None = None) -> None:
    span.set_attribute("chat.llm.outcome", outcome)
    if input_tokens is not None:
        span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
    if output_tokens is not None:
        span.set_attribute("gen_ai.usage.output_tokens", output_tokens)
    if outcome != "ok":
        span.set_status(StatusCode.ERROR, outcome)
    span.end()


def traced_tool(tracer: Tracer | None, tool: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """`tool` inside an `execute_tool` span; the same function when tracing is off.

    `functools.wraps` keeps the name, docstring and signature the SDK builds the tool schema from.
    """
    if tracer is None:
        return tool
    name = tool.__name__
    attributes = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name, "gen_ai.tool.type": "function"}

    @functools.wraps(tool)
    async def traced(*args: P.args, **kwargs: P.kwargs) -> R:
        with tracer.start_as_current_span(f"execute_tool {name}", attributes=attributes):
            return await tool(*args, **kwargs)

    return traced
