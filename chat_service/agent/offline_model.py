"""A deterministic model behind the Agents SDK `Model` interface: the real Runner loop, no network.

It reads the count from the instructions it is given (so personalization is real, not faked),
calls `get_current_time` when asked for the time and `get_user_analytics` when asked about
the user's messages, and always states the count ("1 message", "N messages") and which message
of the conversation this is ("message N of this conversation", N counted from the user items of
the input it is given, so a session's memory can be checked without a model).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

from agents import Model, ModelResponse, ModelSettings, ModelTracing, Tool, Usage
from agents.agent_output import AgentOutputSchemaBase
from agents.handoffs import Handoff
from agents.items import TResponseInputItem, TResponseOutputItem, TResponseStreamEvent
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseTextDeltaEvent,
)
from openai.types.responses.response_prompt_param import ResponsePromptParam

from .wording import messages_phrase

_COUNT = re.compile(r"has sent (\d+) messages?")
_TIME_QUESTION = re.compile(r"\b(time|clock|o'clock)\b", re.IGNORECASE)
WORDS_PER_DELTA = 3  # a streamed reply arrives a few words at a time, like a real model's tokens
_ANALYTICS_QUESTION = re.compile(r"\b(analytics|stats|statistics|how many messages)\b", re.IGNORECASE)


def _field(item: Any, name: str) -> Any:
    return item.get(name) if isinstance(item, dict) else getattr(item, name, None)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Iterable):
        return " ".join(str(_field(part, "text") or "") for part in content)
    return ""


def _last_user_text(items: list[Any]) -> str:
    for item in reversed(items):
        if _field(item, "role") == "user":
            return _text_of(_field(item, "content"))
    return ""


def _tool_outputs(items: list[Any]) -> dict[str, str]:
    names = {_field(i, "call_id"): _field(i, "name") for i in items if _field(i, "type") == "function_call"}
    return {
        str(names.get(_field(i, "call_id"))): str(_field(i, "output"))
        for i in items
        if _field(i, "type") == "function_call_output"
    }


def _message(text: str) -> ResponseOutputMessage:
    return ResponseOutputMessage(
        id=f"msg_{uuid.uuid4().hex}",
        type="message",
        role="assistant",
        status="completed",
        content=[ResponseOutputText(text=text, type="output_text", annotations=[])],
    )


def _tool_call(name: str) -> ResponseFunctionToolCall:
    call_id = f"call_{uuid.uuid4().hex}"
    return ResponseFunctionToolCall(id=call_id, call_id=call_id, type="function_call", name=name, arguments="{}")


def reply_for(instructions: str | None, items: list[Any], tool_names: set[str]) -> TResponseOutputItem:
    """The model's whole policy: one tool call, or the final reply."""
    match = _COUNT.search(instructions or "")
    count = int(match.group(1)) if match else 0
    text = _last_user_text(items)
    outputs = _tool_outputs(items)
    if _TIME_QUESTION.search(text) and "get_current_time" in tool_names and "get_current_time" not in outputs:
        return _tool_call("get_current_time")
    if _ANALYTICS_QUESTION.search(text) and "get_user_analytics" in tool_names and "get_user_analytics" not in outputs:
        return _tool_call("get_user_analytics")
    said = sum(1 for item in items if _field(item, "role") == "user")
    parts = [f"Hello! You have sent {messages_phrase(count)} so far. This is message {said} of this conversation."]
    if "get_current_time" in outputs:
        parts.append(f"The current time is {outputs['get_current_time']}.")
    if "get_user_analytics" in outputs:
        parts.append(f"Analytics says: {outputs['get_user_analytics']}.")
    if len(parts) == 1:
        parts.append("How can I help you today?")
    return _message(" ".join(parts))


class OfflineModel(Model):
    """Answers at once, deterministically, from the instructions and the conversation so far."""

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
        items: list[Any] = [{"role": "user", "content": input}] if isinstance(input, str) else list(input)
        output = reply_for(system_instructions, items, {tool.name for tool in tools})
        return ModelResponse(output=[output], usage=Usage(requests=1), response_id=None)

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
        """The same answer as `get_response`, as a real stream: the reply text a few words per delta."""
        response = await self.get_response(
            system_instructions,
            input,
            model_settings,
            tools,
            output_schema,
            handoffs,
            tracing,
        )
        output = response.output[0]
        sequence = 0
        if isinstance(output, ResponseOutputMessage):
            text = "".join(part.text for part in output.content if isinstance(part, ResponseOutputText))
            for delta in text_deltas(text):
                yield ResponseTextDeltaEvent(
                    type="response.output_text.delta",
                    item_id=output.id,
                    output_index=0,
                    content_index=0,
                    delta=delta,
                    logprobs=[],
                    sequence_number=sequence,
                )
                sequence += 1
                # Let the consumer (the client's connection) run between deltas, as a real stream
                # would: without this a whole reply would be queued before its first byte is sent.
                await asyncio.sleep(0)
        yield ResponseCompletedEvent(
            type="response.completed",
            sequence_number=sequence,
            response=Response(
                id=f"resp_{uuid.uuid4().hex}",
                created_at=0,
                model="offline",
                object="response",
                output=response.output,
                tool_choice="auto",
                tools=[],
                parallel_tool_calls=False,
                status="completed",
                usage=None,
            ),
        )


def text_deltas(text: str, words: int = WORDS_PER_DELTA) -> Iterator[str]:
    """`text` in pieces of `words` words each (a piece keeps the space before its first word)."""
    pieces = re.findall(r"\s*\S+", text)
    for start in range(0, len(pieces), words):
        yield "".join(pieces[start : start + words])
