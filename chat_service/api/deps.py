"""Typed access to what the lifespan created, for route signatures."""

from __future__ import annotations

from typing import Annotated, TypedDict

from fastapi import Depends, Request

from servicekit.admission import Limiter, ShedGate
from servicekit.connections import ConnectionEvents

from ..agent.agent import PersonalizedAgents
from ..agent.direct_run import DirectRuns
from ..agent.llm import LLM
from ..analytics_client import AnalyticsClient
from ..auth import Authenticator
from ..core.config import Settings
from ..core.metrics import ChatMetrics
from ..delivery import Deliverer
from ..outbox import Outbox
from ..rate_limit import RateLimiter
from ..sessions import Conversations
from .turns import ChatTurns


class State(TypedDict):
    settings: Settings
    metrics: ChatMetrics
    analytics: AnalyticsClient
    agents: PersonalizedAgents
    runs: DirectRuns
    llm: LLM
    outbox: Outbox
    deliverer: Deliverer
    rate_limiter: RateLimiter | None
    admission: Limiter | None
    admission_gate: ShedGate | None  # servicekit.admission.GATE_KEY
    connection_events: ConnectionEvents
    authenticator: Authenticator | None
    conversations: Conversations


async def get_settings(request: Request) -> Settings:
    return request.state.settings  # type: ignore[no-any-return]


async def get_metrics(request: Request) -> ChatMetrics:
    return request.state.metrics  # type: ignore[no-any-return]


async def get_analytics(request: Request) -> AnalyticsClient:
    return request.state.analytics  # type: ignore[no-any-return]


async def get_agents(request: Request) -> PersonalizedAgents:
    return request.state.agents  # type: ignore[no-any-return]


async def get_llm(request: Request) -> LLM:
    return request.state.llm  # type: ignore[no-any-return]


async def get_outbox(request: Request) -> Outbox:
    return request.state.outbox  # type: ignore[no-any-return]


async def get_deliverer(request: Request) -> Deliverer:
    return request.state.deliverer  # type: ignore[no-any-return]


async def get_rate_limiter(request: Request) -> RateLimiter | None:
    return request.state.rate_limiter  # type: ignore[no-any-return]


async def get_authenticator(request: Request) -> Authenticator | None:
    return request.state.authenticator  # type: ignore[no-any-return]


async def get_conversations(request: Request) -> Conversations:
    return request.state.conversations  # type: ignore[no-any-return]


async def get_turns(request: Request) -> ChatTurns:
    return ChatTurns(request)


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[ChatMetrics, Depends(get_metrics)]
AnalyticsDep = Annotated[AnalyticsClient, Depends(get_analytics)]
AgentsDep = Annotated[PersonalizedAgents, Depends(get_agents)]
LLMDep = Annotated[LLM, Depends(get_llm)]
OutboxDep = Annotated[Outbox, Depends(get_outbox)]
DelivererDep = Annotated[Deliverer, Depends(get_deliverer)]
RateLimiterDep = Annotated[RateLimiter | None, Depends(get_rate_limiter)]
AuthenticatorDep = Annotated[Authenticator | None, Depends(get_authenticator)]
ConversationsDep = Annotated[Conversations, Depends(get_conversations)]
TurnsDep = Annotated[ChatTurns, Depends(get_turns)]  # the chat routes' steps, with what they use
