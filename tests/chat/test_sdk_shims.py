"""The identity-map shim answers exactly what the Agents SDK's own function answers.

Fails when the SDK changes under it: a version not yet checked, the function moved or renamed,
or a different map for any of these graphs.
"""

from __future__ import annotations

from typing import Any

import pytest
from agents import Agent, RunConfig, Runner, handoff
from agents import _run_state_agent_identity as identity
from agents.run_internal import tool_use_tracker

from chat_service.agent import sdk_shims
from chat_service.agent.agent import PersonalizedAgents, build_agent
from chat_service.agent.offline_model import OfflineModel
from chat_service.agent.tools import ChatContext

SDK = sdk_shims._sdk_identity_map


def _graphs() -> dict[str, Agent[Any]]:
    ours = build_agent(OfflineModel())
    billing = Agent(name="billing", instructions="b")
    support = Agent(name="support", instructions="s", handoffs=[billing])
    triage = Agent(name="triage", instructions="t", handoffs=[support, handoff(billing)])
    as_tool = Agent(name="outer", tools=[Agent(name="inner").as_tool(tool_name="inner", tool_description="d")])
    twin_a = Agent(name="twin", instructions="a")
    twin_b = Agent(name="twin", instructions="b", handoffs=[twin_a])
    twins = Agent(name="root", handoffs=[twin_b, twin_a, Agent(name="twin#2")])
    looped = Agent(name="loop")
    looped.handoffs = [looped]
    return {
        "ours": ours,
        "personalized": PersonalizedAgents(ours).for_count(3),
        "handoffs": triage,
        "agent_as_tool": as_tool,
        "repeated_names": twins,
        "self_loop": looped,
    }


@pytest.mark.parametrize("name", list(_graphs()))
def test_the_map_is_the_sdks_map(name):
    agent = _graphs()[name]
    mine, theirs = sdk_shims.identity_map(agent), SDK(agent)
    assert list(mine.items()) == list(theirs.items())  # the same keys, agents and order


def test_repeated_names_are_left_to_the_sdk():
    twins = _graphs()["repeated_names"]
    assert set(sdk_shims.identity_map(twins)) == {"root", "twin", "twin#3", "twin#2"}


def test_the_installed_sdk_is_a_checked_version_and_the_shim_is_in_place():
    # Fails on an upgrade: re-run this file on the new version, then add it to CHECKED_VERSIONS.
    assert sdk_shims.checked_version()
    assert sdk_shims.install()
    assert identity._build_agent_identity_map is sdk_shims.identity_map
    assert tool_use_tracker._build_agent_identity_map is sdk_shims.identity_map
    agent = _graphs()["handoffs"]
    assert identity._build_agent_identity_keys_by_id(agent) == {id(a): key for key, a in SDK(agent).items()}


def test_an_unchecked_version_leaves_the_sdk_alone(monkeypatch):
    monkeypatch.setattr(sdk_shims, "CHECKED_VERSIONS", ("0.0.",))
    for module in sdk_shims._HOLDERS:
        monkeypatch.setattr(module, sdk_shims._NAME, SDK)
    assert not sdk_shims.install()
    assert identity._build_agent_identity_map is SDK


async def test_a_run_with_the_shim_installed_answers_as_before():
    sdk_shims.install()
    agent = PersonalizedAgents(build_agent(OfflineModel())).for_count(2)
    run_config = RunConfig(tracing_disabled=True)
    result = await Runner.run(agent, input="hello", context=ChatContext("alice", None), run_config=run_config)  # type: ignore[arg-type]
    assert "2 messages" in result.final_output
