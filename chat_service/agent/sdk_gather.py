"""A narrow, version-guarded shortcut for the tasks the Agents SDK makes of no-op coroutines.

Every `Runner.run` gathers its lifecycle hooks, the system prompt, the prompt, each function
tool's enablement check and each tool category's executor with
`agents.util._asyncio_tasks.gather_with_cancel`, which makes an asyncio task of every
awaitable: ~21 tasks for a one-turn run of our agent, plus a gather future and an
`asyncio.wait` per call, all scheduled through the event loop although every one of them
finishes without ever suspending (the default `RunHooks` methods are empty, our instructions
are a string, our tools' `is_enabled` is `True`, there are no shell or computer calls). That
churn is ~95 us of a ~435 us run (a one-turn run against the offline model under uvloop,
measured: 432-440 us with the SDK's gather, 337 us with this one). Python 3.12's
`asyncio.eager_task_factory` removes it without changing semantics; this project is on 3.11.

`gather_with_cancel` here steps a coroutine eagerly only when its code is one of the SDK's own
functions listed in `_SAFE` *and* its arguments make it a known no-op (a user's hook override,
a callable `instructions`, a dynamic prompt, a callable `is_enabled` or a non-empty list of calls
all have other code or fail the check, so the whole gather goes to the SDK's function, as
before). Nothing to gather (no handoffs) answers `()` at once. Each eager step runs in a copy
of the context, as a task's would; a step that suspends after all (an SDK change) continues in
a task of its own, and any error or pending step hands the lot to the SDK's function as
finished futures and tasks, so failure handling stays the SDK's. Installed only on the SDK
versions it was checked against; `tests/chat/test_sdk_gather.py` fails on any other until the
list is re-checked.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from types import CodeType
from typing import Any

from agents import Agent, agent, lifecycle
from agents.run_internal import run_loop, tool_actions, tool_execution, tool_planning, turn_preparation, turn_resolution
from agents.util import _asyncio_tasks, _coro

from .sdk_shims import checked_version

Check = Callable[[Mapping[str, Any]], bool]
Gather = Callable[..., Awaitable[tuple[Any, ...]]]

_sdk_gather: Gather = _asyncio_tasks.gather_with_cancel
# Modules that imported `gather_with_cancel` by name and use it on a plain run's path.
_HOLDERS = (agent, run_loop, turn_resolution, turn_preparation, tool_planning, tool_execution, tool_actions)
_NAME = "gather_with_cancel"


def _always(_: Mapping[str, Any]) -> bool:
    return True


def _code(function: Any) -> CodeType:
    code: CodeType = inspect.unwrap(function).__code__
    return code


def _local_code(outer: Any, name: str) -> CodeType:
    """The code of the coroutine function `name` defined inside `outer`."""
    for constant in _code(outer).co_consts:
        if isinstance(constant, CodeType) and constant.co_name == name:
            return constant
    raise LookupError(f"{outer.__qualname__} no longer defines {name}")


def _empty(argument: str) -> Check:
    return lambda arguments: not arguments[argument]


def _safe_table() -> dict[CodeType, Check]:
    """Code objects of the SDK's coroutines, with when a call of each is a no-op that never suspends."""
    safe: dict[CodeType, Check] = {_code(_coro.noop_coroutine): _always}
    for hooks in (lifecycle.RunHooksBase, lifecycle.AgentHooksBase):
        for name, member in vars(hooks).items():
            if name.startswith("on_") and inspect.iscoroutinefunction(member):
                safe[_code(member)] = _always  # the base class's empty body, never an override
    safe[_code(Agent.get_system_prompt)] = lambda a: a["self"].instructions is None or isinstance(a["self"].instructions, str)
    safe[_code(Agent.get_prompt)] = lambda a: a["self"].prompt is None
    tool_enabled: Check = lambda a: not callable(getattr(a["tool"], "is_enabled", True))  # noqa: E731
    safe[_local_code(agent.AgentBase.get_all_tools, "_check_tool_enabled")] = tool_enabled
    safe[_local_code(tool_execution.resolve_enabled_function_tools, "_check_tool_enabled")] = tool_enabled
    # No calls: the function executor only re-checks enablement (through this module's gather).
    safe[_code(tool_execution.execute_function_tool_calls)] = _empty("tool_runs")
    safe[_code(tool_execution.execute_computer_actions)] = _empty("actions")
    for serial in ("execute_custom_tool_calls", "execute_local_shell_calls", "execute_shell_calls", "execute_apply_patch_calls"):
        safe[_code(getattr(tool_execution, serial))] = _empty("calls")
    return safe


_SAFE = _safe_table()


def eager_safe(awaitable: Awaitable[Any]) -> bool:
    """Whether `awaitable` is a not yet started SDK coroutine known to finish at once."""
    code = getattr(awaitable, "cr_code", None)
    check = _SAFE.get(code) if code is not None else None
    if check is None or inspect.getcoroutinestate(awaitable) != inspect.CORO_CREATED:  # type: ignore[arg-type]
        return False
    return check is _always or check(awaitable.cr_frame.f_locals)  # type: ignore[attr-defined]


class _Resumed:
    """Awaits a coroutine whose first step already ran and yielded `first`."""

    def __init__(self, coro: Coroutine[Any, Any, Any], first: Any) -> None:
        self.coro = coro
        self.first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        value = self.first
        while True:
            error: BaseException | None = None
            try:
                sent = yield value
            except GeneratorExit:
                self.coro.close()
                raise
            except BaseException as thrown:  # a cancellation, delivered to the coroutine as a task would
                error = thrown
            try:
                value = self.coro.send(sent) if error is None else self.coro.throw(error)
            except StopIteration as done:
                return done.value


async def _resume(coro: Coroutine[Any, Any, Any], first: Any) -> Any:
    return await _Resumed(coro, first)


def _step(coro: Coroutine[Any, Any, Any], loop: asyncio.AbstractEventLoop) -> asyncio.Future[Any]:
    """Run the first step of `coro` now, in a copied context as a task would; a future for the rest."""
    context = contextvars.copy_context()
    future: asyncio.Future[Any]
    try:
        first = context.run(coro.send, None)
    except StopIteration as done:
        future = loop.create_future()
        future.set_result(done.value)
    except BaseException as error:
        future = loop.create_future()
        future.set_exception(error)
    else:
        future = loop.create_task(_resume(coro, first), context=context)
    return future


async def gather_with_cancel(
    *awaitables: Awaitable[Any],
    on_child_failure: Callable[[BaseException], None] | None = None,
) -> tuple[Any, ...]:
    """The SDK's `gather_with_cancel`, without tasks when every awaitable is a known no-op."""
    if not awaitables:
        # The SDK's answer too, minus its trip round the loop (it waits on a finished gather).
        return ()
    if not all(eager_safe(awaitable) for awaitable in awaitables):
        return await _sdk_gather(*awaitables, on_child_failure=on_child_failure)
    loop = asyncio.get_running_loop()
    futures = [_step(awaitable, loop) for awaitable in awaitables]  # type: ignore[arg-type]
    if all(future.done() and future.exception() is None for future in futures):
        return tuple(future.result() for future in futures)
    return await _sdk_gather(*futures, on_child_failure=on_child_failure)


def install() -> bool:
    """Put `gather_with_cancel` in place on a checked SDK version (idempotent); True when installed."""
    if not checked_version():
        return False
    for module in _HOLDERS:
        setattr(module, _NAME, gather_with_cancel)
    return True
