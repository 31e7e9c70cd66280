"""The shared agent, built once; each request runs its own personalized copy."""

from __future__ import annotations

import copy

from agents import Agent, Model, function_tool
from opentelemetry.trace import Tracer

from . import sdk_gather, sdk_shims
from .tools import ChatContext, get_current_time, get_user_analytics
from .tracing import traced_tool
from .wording import messages_phrase

BASE_INSTRUCTIONS = (
    "You are a helpful chatbot. Respond to user messages in a friendly and informative way. "
    "If the user asks for the time, use the get_current_time tool. "
    "If the user asks about their messages or analytics, use the get_user_analytics tool."
)


def build_agent(model: Model, *, tracer: Tracer | None = None) -> Agent[ChatContext]:
    """The shared agent; with a `tracer`, each tool call is an `execute_tool` span."""
    sdk_shims.install()  # the SDK's per-run agent fingerprint, skipped where it cannot matter
    sdk_gather.install()  # and its tasks for no-op hooks and checks
    return Agent[ChatContext](
        name="ChatAgent",
        instructions=BASE_INSTRUCTIONS,
        model=model,
        tools=[function_tool(traced_tool(tracer, get_current_time)), function_tool(traced_tool(tracer, get_user_analytics))],
    )


def personalized(agent: Agent[ChatContext], message_count: int) -> Agent[ChatContext]:
    """A copy carrying this user's count; the shared agent (and its tools list) stays untouched."""
    return agent.clone(
        instructions=(
            f"{BASE_INSTRUCTIONS} The user has sent {messages_phrase(message_count)} so far, "
            "so personalize your response accordingly."
        )
    )


class PersonalizedAgents:
    """Personalized copies by count, made once each; every run gets a shallow copy of its own.

    Cloning costs ~90 us (`Agent.__post_init__` validates every field) and most users' counts
    repeat, so the personalized agent is cached. But runs must not share one `Agent` object:
    on every turn the SDK checks that no concurrent run of the *same object* changed its tools,
    scanning every run in flight on that object (`agents/run_internal/agent_tool_configuration.py`,
    "Use a separate agent per run"), so N concurrent chats with the same count paid O(N) each.
    `copy.copy` (3 us) gives each run its own object sharing the cached one's instructions,
    tools and model, none of which is ever mutated. At `limit` copies the cache starts over,
    which bounds memory.
    """

    def __init__(self, agent: Agent[ChatContext], *, limit: int = 4096) -> None:
        self.agent = agent
        self.limit = limit
        self._copies: dict[int, Agent[ChatContext]] = {}

    def for_count(self, message_count: int) -> Agent[ChatContext]:
        shared = self._copies.get(message_count)
        if shared is None:
            if len(self._copies) >= self.limit:
                self._copies.clear()
            shared = self._copies[message_count] = personalized(self.agent, message_count)
        return copy.copy(shared)
