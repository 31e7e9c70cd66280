"""An agent run that skips `Runner.run` when the model answers with text at once.

Most chats are one model call that answers with a message: no tool call, no refusal. For those,
`Runner.run` is ~300 us of CPU of its own at 1 run and ~650 us at 50 concurrent (turn loop, run
state, tool planning, guardrail and hook gathering, usage and trace bookkeeping, measured with a
model that answers at once), which is most of what chat spends above the floor app's per chat.

`DirectRuns.run` makes the first model call itself, with exactly the arguments `Runner.run`
would pass on its first turn, through the public `Model.get_response`. When the answer is
messages only, with text and no refusal, that is the run's final output, as the SDK would
decide it. Anything else (a tool call, a refusal, a reasoning item, no text) goes to
`Runner.run` with that first answer already in hand (`_Primed`), so the SDK runs its own loop
from there: tool execution, max turns, errors, all its own. A model call is never made twice.

Only an agent and run configuration this reproduces are run directly (`direct_run_supported`):
string instructions, function tools that are always enabled and uniquely named, no handoffs,
guardrails, hooks, output type, prompt or MCP servers, no runner-managed retries or call timeout
in the model settings, a model with no per-run clean-up and no generated prompt cache key, the
SDK's tracing off, and every other `RunConfig` field at its default. Anything else, and any SDK
version not checked (`CHECKED_VERSIONS`), runs through `Runner.run` as before.
`tests/chat/test_direct_run.py` runs both paths on the same scripted answers and compares what the
model was asked and what the run returned.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.metadata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agents import Agent, FunctionTool, Model, ModelTracing, RunConfig, RunContextWrapper, Runner, Usage
from agents.items import ItemHelpers, ModelResponse, TResponseInputItem
from agents.run_internal.items import deduplicate_input_items_preferring_latest, prepare_model_input_items
from openai.types.responses import ResponseOutputMessage, ResponseOutputRefusal

CHECKED_VERSIONS = ("0.24.",)

Given = str | list[TResponseInputItem]  # what `Runner.run` takes as `input`

# RunConfig fields that change nothing a direct run does: names for the SDK's own traces, and the
# provider, which only resolves a model given by name (`direct_run_supported` requires a `Model`).
_UNUSED_FIELDS = frozenset(
    {"workflow_name", "trace_id", "group_id", "trace_metadata", "trace_include_sensitive_data", "model_provider"}
)


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """What a run produced: the final output, the run's new items as input items, the usage."""

    final_output: Any
    items: list[TResponseInputItem]
    usage: Usage


def direct_run_supported(agent: Agent[Any], run_config: RunConfig) -> bool:
    """Whether a run of `agent` (or of a copy differing only in its string instructions) under
    `run_config` is one `DirectRuns` reproduces; checked once, when the agent is built."""
    if not importlib.metadata.version("openai-agents").startswith(CHECKED_VERSIONS):
        return False
    default = RunConfig()
    for field in dataclasses.fields(RunConfig):
        if field.name == "tracing_disabled":
            if not run_config.tracing_disabled:
                return False
        elif field.name not in _UNUSED_FIELDS and getattr(run_config, field.name) != getattr(default, field.name):
            return False
    settings = agent.model_settings
    model = agent.model
    return (
        isinstance(agent.instructions, str)
        and isinstance(model, Model)
        and _model_needs_nothing_around_its_calls(model)
        and settings.retry is None  # the SDK's runner-managed retries and call timeout
        and settings.timeout is None
        and agent.prompt is None
        and agent.output_type is None
        and agent.hooks is None
        and not agent.handoffs
        and not agent.input_guardrails
        and not agent.output_guardrails
        and not agent.mcp_servers
        and agent.tool_use_behavior == "run_llm_again"
        and all(type(tool) is FunctionTool and tool.is_enabled is True for tool in agent.tools)
        and len({tool.name for tool in agent.tools}) == len(agent.tools)  # the SDK would drop or refuse a twin
    )


def _model_needs_nothing_around_its_calls(model: Model) -> bool:
    """No per-run clean-up and no generated prompt cache key: what the SDK adds around a model's
    calls, and neither a direct run nor `_Primed` reproduces."""
    supports_cache_key = getattr(model, "_supports_default_prompt_cache_key", None)
    return type(model)._cleanup_on_run_end is Model._cleanup_on_run_end and not (
        callable(supports_cache_key) and supports_cache_key()
    )


class DirectRuns:
    """Runs of one agent's copies under one `RunConfig`; direct where `direct_run_supported`."""

    def __init__(self, agent: Agent[Any], run_config: RunConfig) -> None:
        self.run_config = run_config
        self.direct = direct_run_supported(agent, run_config)

    async def run(self, agent: Agent[Any], given: Given, context: Any, *, max_turns: int) -> RunOutcome:
        """Run `agent` (a per-run copy of the one given at construction) on `given`."""
        if not self.direct:
            return await self._sdk_run(agent, given, context, max_turns)
        wrapper = RunContextWrapper(context)
        # The SDK's first-turn input: normalized for the API, then deduplicated.
        input_items = deduplicate_input_items_preferring_latest(
            prepare_model_input_items(ItemHelpers.input_to_new_input_list(given))
        )
        model: Model = agent.model  # type: ignore[assignment]  # a Model: direct_run_supported
        response = await model.get_response(
            agent.instructions,  # type: ignore[arg-type]  # a str: direct_run_supported
            input_items,
            agent.model_settings,
            await agent.get_all_tools(wrapper),
            None,
            [],
            ModelTracing.DISABLED,
            previous_response_id=None,
            conversation_id=None,
            prompt=None,
        )
        text = final_text(response.output)
        if text is None:  # not a plain answer: the SDK's loop takes it from this response
            primed = copy.copy(agent)  # the caller's own copy stays as it was
            primed.model = _Primed(model, response)
            return await self._sdk_run(primed, given, context, max_turns)
        usage = Usage()
        usage.add(response.usage)
        return RunOutcome(text, response.to_input_items(), usage)

    async def _sdk_run(self, agent: Agent[Any], given: Given, context: Any, max_turns: int) -> RunOutcome:
        result = await Runner.run(agent, input=given, context=context, run_config=self.run_config, max_turns=max_turns)
        items = [item.to_input_item() for item in result.new_items]
        return RunOutcome(result.final_output, items, result.context_wrapper.usage)


def final_text(output: Sequence[Any]) -> str | None:
    """The run's final output when `output` (a first model answer) ends the run at once, as
    `Runner.run` decides it for a plain-text agent: messages only, the last one with text and
    without a refusal. None for anything the SDK's loop must handle."""
    if not output or not all(type(item) is ResponseOutputMessage for item in output):
        return None
    last = output[-1]
    if any(type(part) is ResponseOutputRefusal for part in last.content):
        return None
    return ItemHelpers.extract_text(last)


class _Primed(Model):
    """`model`, except that the first call answers with `first` (a response already received
    for exactly that call); later calls, streams and retry advice go to `model`. Only wraps a
    model with nothing to do around its calls (`_model_needs_nothing_around_its_calls`), so the
    base class's no-op clean-up and the absent cache-key hook are `model`'s own answers too."""

    def __init__(self, model: Model, first: ModelResponse) -> None:
        self._model = model
        self._first: ModelResponse | None = first

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        first, self._first = self._first, None
        if first is not None:
            return first
        return await self._model.get_response(*args, **kwargs)

    def stream_response(self, *args: Any, **kwargs: Any) -> Any:
        return self._model.stream_response(*args, **kwargs)

    def get_retry_advice(self, request: Any) -> Any:
        return self._model.get_retry_advice(request)
