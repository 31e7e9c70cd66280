"""A narrow, version-guarded fix for work the Agents SDK repeats on every run for nothing.

Each `Runner.run` builds the "agent identity map" of the starting agent's graph (handoffs and
agents-as-tools) at least twice: to snapshot the tool-use tracker, and for the sandbox runtime's
resume keys (`agents/_run_state_agent_identity.py::_build_agent_identity_map`). The map names
each agent by its `name`, and only agents that share a name need telling apart; the SDK sorts
every name's group by a fingerprint of the agent (instructions, tools and their schemas, hooks,
settings, rendered as canonical JSON), including the groups of one agent, where the order is
already known. For our one agent that is ~130 us a call, measured, for a map of one entry.

`install()` wraps the function: when every name in the graph is unique the map is the graph in
breadth-first order by name (exactly what the SDK's loop produces for groups of one), and any
graph with a repeated name goes to the SDK's own function. Installed only on the SDK versions it
was checked against; `tests/chat/test_sdk_shims.py` compares it with the SDK's function on
graphs with and without repeated names, and fails on a version not yet checked.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from typing import Any

from agents import Agent, run_state
from agents import _run_state_agent_identity as identity
from agents.run_internal import tool_use_tracker

CHECKED_VERSIONS = ("0.24.",)

IdentityMap = Callable[[Agent[Any]], dict[str, Agent[Any]]]

# Modules that imported the function by name; `_build_agent_identity_keys_by_id` looks it up in
# `identity` at call time.
_HOLDERS = (identity, tool_use_tracker, run_state)
_NAME = "_build_agent_identity_map"
_sdk_identity_map: IdentityMap = identity._build_agent_identity_map


def identity_map(initial_agent: Agent[Any]) -> dict[str, Agent[Any]]:
    """The SDK's identity map, without fingerprints when no two agents share a name."""
    agents = list(identity._iter_agent_graph(initial_agent))
    by_name = {agent.name: agent for agent in agents}
    if len(by_name) == len(agents):
        return by_name
    return _sdk_identity_map(initial_agent)


def checked_version() -> bool:
    return importlib.metadata.version("openai-agents").startswith(CHECKED_VERSIONS)


def install() -> bool:
    """Put `identity_map` in place on a checked SDK version (idempotent); True when installed."""
    if not checked_version():
        return False
    for module in _HOLDERS:
        setattr(module, _NAME, identity_map)
    return True
