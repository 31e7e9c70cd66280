"""The eager gather answers as the SDK's `gather_with_cancel` does, without tasks for known no-ops.

Fails when the SDK changes under it: a version not yet checked, a listed coroutine that no
longer finishes at once, a new module importing the SDK's gather, or a run that answers
differently or still makes a task per hook.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import Awaitable, Iterator
from typing import Any

import pytest
from agents import Agent, RunConfig, RunContextWrapper, RunHooks, Runner
from agents.run_internal import tool_execution
from agents.util import _asyncio_tasks

from chat_service.agent import sdk_gather, sdk_shims
from chat_service.agent.agent import PersonalizedAgents, build_agent
from chat_service.agent.offline_model import OfflineModel
from chat_service.agent.tools import ChatContext

SDK = sdk_gather._sdk_gather
RUN_CONFIG = RunConfig(tracing_disabled=True)
VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


@pytest.fixture
def stock(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The SDK's own gather everywhere, for the duration of a test."""
    for module in sdk_gather._HOLDERS:
        monkeypatch.setattr(module, sdk_gather._NAME, SDK)
    yield


@pytest.fixture
def eager(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make this file's test coroutines count as known no-ops."""
    for function in (suspends, fails, returns):
        monkeypatch.setitem(sdk_gather._SAFE, function.__code__, sdk_gather._always)
    yield


async def returns(value: str) -> str:
    VAR.set(value)  # in the child's own context, as in a task
    return f"{value}:{VAR.get()}"


async def suspends(value: str, started: list[str] | None = None) -> str:
    if started is not None:
        started.append(value)
    VAR.set(value)
    await asyncio.sleep(0.01)
    return f"{value}:{VAR.get()}"


async def fails(message: str) -> str:
    raise ValueError(message)


async def _run(agent: Agent[ChatContext]) -> tuple[Any, int]:
    """The run's result and how many tasks were made during it."""
    loop = asyncio.get_running_loop()
    made = 0

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        nonlocal made
        made += 1
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(factory)  # type: ignore[arg-type]
    try:
        result = await Runner.run(agent, input="hello", context=ChatContext("alice", None), run_config=RUN_CONFIG)  # type: ignore[arg-type]
    finally:
        loop.set_task_factory(None)
    return result, made


def _without_ids(items: list[Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in dict(item.to_input_item()).items() if k != "id"} for item in items]


def _agent() -> Agent[ChatContext]:
    return PersonalizedAgents(build_agent(OfflineModel())).for_count(2)


def test_the_installed_sdk_is_a_checked_version_and_the_gather_is_in_place():
    # Fails on an upgrade: re-run this file on the new version, then add it to sdk_shims.CHECKED_VERSIONS.
    assert sdk_gather.install()
    for module in sdk_gather._HOLDERS:
        assert module.gather_with_cancel is sdk_gather.gather_with_cancel  # type: ignore[attr-defined]


def test_every_sdk_module_on_the_run_path_uses_it():
    sdk_gather.install()
    missed = [
        name
        for name, module in list(sys.modules.items())
        if name.startswith("agents.")
        and not name.startswith(("agents.realtime", "agents.sandbox", "agents.extensions", "agents.util._asyncio_tasks"))
        and getattr(module, "gather_with_cancel", None) is SDK
    ]
    assert missed == []


def test_an_unchecked_version_leaves_the_sdk_alone(monkeypatch, stock):
    monkeypatch.setattr(sdk_shims, "CHECKED_VERSIONS", ("0.0.",))
    assert not sdk_gather.install()
    assert sdk_gather._HOLDERS[0].gather_with_cancel is SDK


def test_the_listed_coroutines_finish_at_once_on_our_agent():
    agent = _agent()
    wrapper = RunContextWrapper(ChatContext("alice", None))  # type: ignore[arg-type]
    hooks: RunHooks[Any] = RunHooks()
    for coro in (
        hooks.on_agent_start(wrapper, agent),  # type: ignore[arg-type]
        hooks.on_llm_end(wrapper, agent, None),  # type: ignore[arg-type]
        agent.get_system_prompt(wrapper),
        agent.get_prompt(wrapper),
        tool_execution.execute_shell_calls(public_agent=agent, calls=[], context_wrapper=wrapper, hooks=hooks, config=RUN_CONFIG),
    ):
        assert sdk_gather.eager_safe(coro)
        with pytest.raises(StopIteration):
            coro.send(None)
    unlisted = agent.get_all_tools(wrapper)
    assert not sdk_gather.eager_safe(unlisted)  # not listed: a task, as before
    unlisted.close()


async def test_a_run_answers_as_before_with_far_fewer_tasks(monkeypatch):
    agent = _agent()  # building the agent installs the gather
    mine, mine_tasks = await _run(agent)
    for module in sdk_gather._HOLDERS:
        monkeypatch.setattr(module, sdk_gather._NAME, SDK)
    theirs, their_tasks = await _run(agent)
    assert mine.final_output == theirs.final_output
    assert _without_ids(mine.new_items) == _without_ids(theirs.new_items)
    assert their_tasks >= 20
    assert mine_tasks <= their_tasks - 20


async def test_a_tool_call_runs_the_same(monkeypatch):
    agent = _agent()
    mine = await Runner.run(agent, input="what time is it?", context=ChatContext("alice", None), run_config=RUN_CONFIG)  # type: ignore[arg-type]
    for module in sdk_gather._HOLDERS:
        monkeypatch.setattr(module, sdk_gather._NAME, SDK)
    theirs = await Runner.run(agent, input="what time is it?", context=ChatContext("alice", None), run_config=RUN_CONFIG)  # type: ignore[arg-type]
    assert [type(item).__name__ for item in mine.new_items] == [type(item).__name__ for item in theirs.new_items]
    assert "ToolCallOutputItem" in [type(item).__name__ for item in mine.new_items]


async def test_user_hooks_run_in_tasks_of_their_own_as_before():
    sdk_gather.install()
    seen: list[asyncio.Task[Any] | None] = []

    class Hooks(RunHooks[Any]):
        async def on_agent_start(self, context: Any, agent: Any) -> None:
            seen.append(asyncio.current_task())

    async def run() -> None:
        await Runner.run(_agent(), input="hello", context=ChatContext("alice", None), run_config=RUN_CONFIG, hooks=Hooks())  # type: ignore[arg-type]
        seen.append(asyncio.current_task())

    await run()
    assert len(seen) == 2 and seen[0] is not None and seen[0] is not seen[1]


async def test_dynamic_instructions_are_not_stepped_eagerly():
    wrapper = RunContextWrapper(None)
    dynamic = Agent(name="d", instructions=lambda context, agent: "hi")
    coro = dynamic.get_system_prompt(wrapper)
    assert not sdk_gather.eager_safe(coro)
    assert await coro == "hi"


async def test_eager_children_get_their_own_context(eager):
    VAR.set("parent")
    assert await sdk_gather.gather_with_cancel(returns("a"), returns("b")) == ("a:a", "b:b")
    assert VAR.get() == "parent"


async def test_a_child_that_suspends_finishes_in_a_task_of_its_own(eager):
    VAR.set("parent")
    started: list[str] = []
    assert await sdk_gather.gather_with_cancel(returns("a"), suspends("b", started)) == ("a:a", "b:b")
    assert started == ["b"] and VAR.get() == "parent"


async def test_a_failing_child_fails_the_gather_and_cancels_the_rest(eager):
    failures: list[BaseException] = []
    pending = suspends("slow")
    with pytest.raises(ValueError, match="boom"):
        await sdk_gather.gather_with_cancel(pending, fails("boom"), on_child_failure=failures.append)
    assert [str(error) for error in failures] == ["boom"]
    assert pending.cr_frame is None  # cancelled and finished, not left running


async def test_cancelling_the_gather_cancels_a_suspended_child(eager):
    started: list[str] = []
    child = suspends("slow", started)
    gather: Awaitable[Any] = sdk_gather.gather_with_cancel(child)
    task = asyncio.ensure_future(gather)
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert started == ["slow"] and child.cr_frame is None


async def test_anything_not_listed_goes_to_the_sdk_gather(eager):
    async def unlisted() -> str:
        return asyncio.current_task().get_name()  # type: ignore[union-attr]

    mine = await sdk_gather.gather_with_cancel(returns("a"), unlisted())
    assert mine[0] == "a:a" and mine[1] != asyncio.current_task().get_name()  # type: ignore[union-attr]
    assert await sdk_gather.gather_with_cancel() == await _asyncio_tasks.gather_with_cancel()
