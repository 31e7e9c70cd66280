"""The agent's tools, all `async def` (a sync tool would run in a thread per call)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from agents import RunContextWrapper

from ..analytics_client import AnalyticsClient
from .wording import messages_phrase


@dataclass(frozen=True, slots=True)
class ChatContext:
    """What one run's tools may use: this request's user and the shared analytics client."""

    user_id: str
    analytics: AnalyticsClient


async def get_current_time() -> str:
    """Returns the current time in UTC."""
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


async def get_user_analytics(ctx: RunContextWrapper[ChatContext]) -> str:
    """Returns how many messages the current user has sent, from the analytics service."""
    count = await ctx.context.analytics.message_count(ctx.context.user_id)
    if count.fallback is not None:
        return f"analytics is unavailable right now ({count.fallback}); counting 0 messages"
    return messages_phrase(count.value)
