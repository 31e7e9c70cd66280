"""A direct run answers exactly as `Runner.run` does: both paths meet the same scripted answers.

Each case scripts a model's answers, runs the agent once through `DirectRuns` and once through
`Runner.run`, and compares what the model was asked on every call and what the run returned (or
raised). Fails when the SDK changes what its first call sends or how it ends a plain-text run.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from agents import (
    Agent,
    AgentHooks,
    GuardrailFunctionOutput,
    ModelRetrySettings,
    ModelSettings,
    ModelTracing,
    RunConfig,
    Runner,
    Usage,
    function_tool,
    input_guardrail,
)
from agents.items import ModelResponse
from agents.models.interface import Model
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputRefusal,
    ResponseOutputText,
    ResponseReasoningItem,
)
from openai.types.responses.response_reasoning_item import Summary
from prometheus_client import CollectorRegistry

from chat_service.agent import direct_run, sdk_gather, sdk_shims
from chat_service.agent.agent import PersonalizedAgents, build_agent
from chat_service.agent.direct_run import DirectRuns, direct_run_supported, final_text
from chat_service.agent.llm import build_llm
from chat_service.core.metrics import ChatMetrics
from tests.chat.conftest import chat_settings

RUN_CONFIG = RunConfig(tracing_disabled=True, workflow_name="chat")


class Refused(Exception):
    """A scripted model failure."""


def message(*parts: str, refusal: str | None = None, id: str = "__fake_id__") -> ResponseOutputMessage:
    content: list[Any] = [ResponseOutputText(type="output_text", text=part, annotations=[]) for part in parts]
    if refusal is not None:
        content.append(ResponseOutputRefusal(type="refusal", refusal=refusal))
    return ResponseOutputMessage(id=id, type="message", role="assistant", status="completed", content=content)


def call(name: str, arguments: str = "{}", call_id: str = "call_1") -> ResponseFunctionToolCall:
    return ResponseFunctionToolCall(type="function_call", name=name, arguments=arguments, call_id=call_id, id="__fake_id__")


def answer(*output: Any, tokens: int = 7) -> ModelResponse:
    usage = Usage(requests=1, input_tokens=tokens, output_tokens=3, total_tokens=tokens + 3)
    return ModelResponse(output=list(output), usage=usage, response_id=None)


@dataclass
class Scripted(Model):
    """Answers with `script` in order (an exception is raised); records what each call was given."""

    script: Sequence[ModelResponse | Exception]
    calls: list[dict[str, Any]] = field(default_factory=list)

    async def get_response(
        self,
        system_instructions: str | None,
        input: Any,
        model_settings: ModelSettings,
        tools: list[Any],
        output_schema: Any,
        handoffs: list[Any],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: Any,
    ) -> ModelResponse:
        self.calls.append(
            {
                "system": system_instructions,
                "input": copy.deepcopy(input),
                "settings": model_settings.to_json_dict(),
                "tools": [tool.name for tool in tools],
                "output_schema": output_schema,
                "handoffs": handoffs,
                "tracing": tracing,
                "ids": (previous_response_id, conversation_id, prompt),
            }
        )
        step = self.script[len(self.calls) - 1]
        if isinstance(step, Exception):
            raise step
        return step

    def stream_response(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


class CacheKeyModel(Scripted):
    """A model the SDK gives a generated `prompt_cache_key` (as it does the OpenAI models)."""

    def _supports_default_prompt_cache_key(self) -> bool:
        return True


class CleanupModel(Scripted):
    """A model the SDK calls after each run."""

    async def _cleanup_on_run_end(self, owner: object) -> None:
        return None


@function_tool
async def lookup(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


@function_tool
async def broken() -> str:
    """Always fails."""
    raise RuntimeError("the tool broke")


def agent_on(model: Model, **changes: Any) -> Agent[Any]:
    base = Agent[Any](name="ChatAgent", instructions="Be brief.", model=model, tools=[lookup, broken])
    return base.clone(**changes) if changes else base


@pytest.fixture(autouse=True)
def _shims_as_in_production() -> None:
    # Chat runs the SDK with its shims installed (`build_agent`); compare against that SDK.
    sdk_shims.install()
    sdk_gather.install()


async def both(
    script: Sequence[ModelResponse | Exception], given: Any = "hello", *, max_turns: int = 6, **changes: Any
) -> tuple[tuple[Any, list[dict[str, Any]]], tuple[Any, list[dict[str, Any]]]]:
    """(outcome or exception, model calls) through `DirectRuns`, then through `Runner.run`."""
    results = []
    for direct in (True, False):
        model = Scripted(script)
        agent = agent_on(model, **changes)
        runs = DirectRuns(agent, RUN_CONFIG)
        assert runs.direct, "every compared case is one the direct path takes"
        try:
            if direct:
                outcome = await runs.run(agent, copy.deepcopy(given), None, max_turns=max_turns)
                got: Any = (outcome.final_output, outcome.items, _usage(outcome.usage))
            else:
                result = await Runner.run(agent, input=copy.deepcopy(given), run_config=RUN_CONFIG, max_turns=max_turns)
                got = (
                    result.final_output,
                    [item.to_input_item() for item in result.new_items],
                    _usage(result.context_wrapper.usage),
                )
        except Exception as error:
            got = (type(error), str(error))
        results.append((got, model.calls))
    return results[0], results[1]


def _usage(usage: Usage) -> tuple[int, int, int, int]:
    return usage.requests, usage.input_tokens, usage.output_tokens, usage.total_tokens


HISTORY: list[Any] = [
    {"role": "user", "content": "what is the weather in Oslo?"},
    {"type": "function_call", "name": "lookup", "arguments": '{"city": "Oslo"}', "call_id": "c0", "id": "__fake_id__"},
    {"type": "function_call_output", "call_id": "c0", "output": "sunny in Oslo"},
    {"id": "__fake_id__", "type": "message", "role": "assistant", "status": "completed",
     "content": [{"type": "output_text", "text": "Sunny.", "annotations": []}]},
    {"role": "user", "content": "and again?"},
    {"id": "__fake_id__", "type": "message", "role": "assistant", "status": "completed",
     "content": [{"type": "output_text", "text": "Still sunny.", "annotations": []}]},
    {"role": "user", "content": "thanks"},
]  # fmt: skip

# The same tool output twice (a store that replayed a turn): the SDK keeps the latest only.
REPEATED_OUTPUT: list[Any] = [
    *HISTORY[:3],
    {"type": "function_call_output", "call_id": "c0", "output": "rainy in Oslo"},
    {"role": "user", "content": "so?"},
]

CASES = {
    "a plain answer": ([answer(message("Hi there!"))], "hello"),
    "a plain answer after a history with repeated ids": ([answer(message("You're welcome."))], HISTORY),
    "a plain answer after a history with a repeated tool output": ([answer(message("Rainy."))], REPEATED_OUTPUT),
    "two messages, the last one's text is the output": ([answer(message("One."), message("Two", " parts."))], "hello"),
    "a tool call, then an answer": ([answer(call("lookup", '{"city": "Rome"}')), answer(message("Sunny in Rome."))], "weather?"),
    "two tool calls in one answer": (
        [
            answer(message("Checking."), call("lookup", '{"city": "A"}', "c1"), call("lookup", '{"city": "B"}', "c2")),
            answer(message("Both sunny.")),
        ],
        "weather in A and B?",
    ),
    "a failing tool: the model is told, the run goes on": ([answer(call("broken")), answer(message("Sorry."))], "break it"),
    "arguments that are not JSON": ([answer(call("lookup", "{not json")), answer(message("Oops."))], "weather?"),
    "a tool call, then text, in one answer": (
        [answer(call("lookup", '{"city": "Rome"}'), message("Checking.")), answer(message("Sunny."))],
        "weather?",
    ),
    "a tool the agent does not have": ([answer(call("missing"))], "hello"),
    "a refusal": ([answer(message(refusal="I can't help with that."))], "hello"),
    "text and a refusal in one message": ([answer(message("Well,", refusal="no."))], "hello"),
    "no output at all": ([answer()], "hello"),
    "a message without text": ([answer(message())], "hello"),
    "a reasoning item before the answer": (
        [
            answer(
                ResponseReasoningItem(id="r1", type="reasoning", summary=[Summary(type="summary_text", text="think")]),
                message("Done."),
            )
        ],
        "hello",
    ),
    "the model failing on the first call": ([Refused("down")], "hello"),
    "the model failing after a tool call": ([answer(call("lookup", '{"city": "Rome"}')), Refused("down")], "hello"),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_a_direct_run_answers_and_asks_as_the_sdks_run(case: str) -> None:
    script, given = CASES[case]
    (direct, direct_calls), (sdk, sdk_calls) = await both(script, given)
    assert direct == sdk
    assert direct_calls == sdk_calls


@pytest.mark.parametrize(
    "settings",
    [
        ModelSettings(temperature=0.2, max_tokens=50),
        ModelSettings(tool_choice="required"),
        ModelSettings(parallel_tool_calls=False),
    ],
    ids=["sampling", "tool choice required", "no parallel tool calls"],
)
@pytest.mark.parametrize("case", ["a plain answer", "a tool call, then an answer"])
async def test_an_agents_own_model_settings_reach_the_model_as_in_the_sdks_run(case: str, settings: ModelSettings) -> None:
    # "required" is sent on the first call and reset by the SDK after the tool ran.
    script, given = CASES[case]
    (direct, direct_calls), (sdk, sdk_calls) = await both(script, given, model_settings=settings)
    assert direct == sdk
    assert direct_calls == sdk_calls


async def test_history_items_are_cleaned_as_the_sdk_cleans_them() -> None:
    history = copy.deepcopy(HISTORY)
    history[1]["created_by"] = "a server"  # output-only metadata, never sent back to the API
    (direct, direct_calls), (sdk, sdk_calls) = await both([answer(message("ok"))], history)
    assert direct == sdk
    assert direct_calls == sdk_calls
    assert "created_by" not in direct_calls[0]["input"][1]


async def test_max_turns_end_both_runs_alike() -> None:
    looping = [answer(call("lookup", '{"city": "X"}', f"c{turn}")) for turn in range(4)]
    (direct, direct_calls), (sdk, sdk_calls) = await both(looping, max_turns=2)
    assert direct == sdk and direct[0].__name__ == "MaxTurnsExceeded"
    assert direct_calls == sdk_calls and len(direct_calls) == 2


async def test_a_plain_answer_never_enters_the_sdks_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    entered: list[object] = []
    real = Runner.run

    async def counting(*args: Any, **kwargs: Any) -> Any:
        entered.append(args)
        return await real(*args, **kwargs)

    monkeypatch.setattr(direct_run.Runner, "run", counting)
    model = Scripted([answer(message("Hi!")), answer(call("lookup", '{"city": "Oslo"}')), answer(message("Sunny."))])
    agent = agent_on(model)
    runs = DirectRuns(agent, RUN_CONFIG)
    assert (await runs.run(agent, "hello", None, max_turns=6)).final_output == "Hi!"
    assert entered == []
    # A tool call goes to the SDK's loop, with the first answer given, not asked for again.
    outcome = await runs.run(agent, "weather?", None, max_turns=6)
    assert outcome.final_output == "Sunny." and len(entered) == 1 and len(model.calls) == 3
    assert agent.model is model, "the caller's copy keeps its model"


@pytest.mark.parametrize(
    "changes",
    [
        {"instructions": lambda context, agent: "dynamic"},
        {"handoffs": [Agent(name="other")]},
        {"output_type": int},
        {"hooks": AgentHooks()},
        {"input_guardrails": [input_guardrail(lambda context, agent, given: GuardrailFunctionOutput(None, False))]},
        {"tool_use_behavior": "stop_on_first_tool"},
        {"tools": [function_tool(lookup.on_invoke_tool, name_override="x", is_enabled=lambda ctx, agent: True)]},  # type: ignore[call-overload]
        {"tools": [lookup, function_tool(lookup.on_invoke_tool, name_override="lookup")]},  # type: ignore[call-overload]
        {"model_settings": ModelSettings(retry=ModelRetrySettings(max_retries=2))},
        {"model_settings": ModelSettings(timeout=5.0)},
        {"model": CacheKeyModel([])},
        {"model": CleanupModel([])},
    ],
    ids=[
        "callable instructions",
        "handoffs",
        "output type",
        "hooks",
        "guardrail",
        "tool use behaviour",
        "callable is_enabled",
        "two tools of one name",
        "the runner's retries",
        "the runner's call timeout",
        "a model taking a generated prompt cache key",
        "a model cleaned up after each run",
    ],
)
def test_agents_the_direct_path_does_not_reproduce_run_through_the_sdk(changes: dict[str, Any]) -> None:
    changes = dict(changes)
    agent = agent_on(changes.pop("model", Scripted([])), **changes)
    assert not direct_run_supported(agent, RUN_CONFIG)


@pytest.mark.parametrize(
    "config",
    [
        RunConfig(tracing_disabled=False),
        RunConfig(tracing_disabled=True, model_settings=ModelSettings(temperature=0.1)),
        RunConfig(tracing_disabled=True, call_model_input_filter=lambda data: data.model_data),
    ],
    ids=["sdk tracing on", "run model settings", "input filter"],
)
def test_run_configs_the_direct_path_does_not_reproduce_run_through_the_sdk(config: RunConfig) -> None:
    assert not direct_run_supported(agent_on(Scripted([])), config)
    assert direct_run_supported(agent_on(Scripted([])), RunConfig(tracing_disabled=True, workflow_name="x", group_id="g"))


async def test_an_unsupported_agent_still_answers_through_the_sdk() -> None:
    model = Scripted([answer(message('{"response": 42}'))])
    agent = agent_on(model, output_type=int)
    runs = DirectRuns(agent, RUN_CONFIG)
    assert not runs.direct
    assert (await runs.run(agent, "the answer?", None, max_turns=6)).final_output == 42


@pytest.mark.parametrize(
    "endpoint", [{}, {"llm_provider": "auto", "openai_api_key": "sk-x", "openai_base_url": "http://127.0.0.1:9/v1"}]
)
async def test_chats_agent_and_run_config_take_the_direct_path(tmp_path, endpoint: dict[str, object]) -> None:
    # What chat builds at start-up, offline and on an OpenAI-compatible endpoint.
    async with contextlib.AsyncExitStack() as resources:
        llm = build_llm(chat_settings(tmp_path, **endpoint), resources, hooks=(), observer=ChatMetrics(CollectorRegistry()))
        agents = PersonalizedAgents(build_agent(llm.model))
        assert direct_run_supported(agents.for_count(3), llm.run_config), llm.provider


def test_an_sdk_version_not_checked_runs_through_the_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(direct_run, "CHECKED_VERSIONS", ("0.0.",))
    assert not direct_run_supported(agent_on(Scripted([])), RUN_CONFIG)


def test_final_text_is_the_last_messages_text() -> None:
    assert final_text([message("a"), message("b", "c")]) == "bc"
    assert final_text([message("a", refusal="no")]) is None
    assert final_text([message("a"), call("lookup")]) is None
    assert final_text([]) is None
    assert json.dumps(final_text([message()])) == "null"
