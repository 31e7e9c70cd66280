"""Per-user chat limits (fixed one-minute windows), in Redis when configured, else in process."""

from __future__ import annotations

import math
import time
from typing import NamedTuple, Protocol

import redis.asyncio as redis

from servicekit.logging import get_logger

WINDOW_SECONDS = 60


class Decision(NamedTuple):
    allowed: bool
    retry_after: int


class RateLimiter(Protocol):
    async def hit(self, user_id: str) -> Decision: ...

    async def close(self) -> None: ...


def _window(now: float) -> tuple[int, int]:
    index = int(now // WINDOW_SECONDS)
    return index, max(1, math.ceil((index + 1) * WINDOW_SECONDS - now))


class MemoryRateLimiter:
    """Counts per user for the current window; older windows are dropped as time moves on."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._window = -1
        self._counts: dict[str, int] = {}

    async def hit(self, user_id: str) -> Decision:
        index, retry_after = _window(time.time())
        if index != self._window:
            self._window, self._counts = index, {}
        count = self._counts.get(user_id, 0) + 1
        self._counts[user_id] = count
        return Decision(count <= self.per_minute, retry_after)

    async def close(self) -> None:
        return None


class RedisRateLimiter:
    """INCR on a key per user and window, shared by every chat replica.

    When Redis cannot be reached the limiter lets the chat through: it guards a bill, and
    turning a Redis outage into a chat outage would be the worse trade.
    """

    def __init__(self, url: str, per_minute: int, *, prefix: str = "chat:rate") -> None:
        self.per_minute = per_minute
        self.prefix = prefix
        self._redis = redis.Redis.from_url(url, socket_timeout=0.2, socket_connect_timeout=0.2)
        self._log = get_logger("rate_limit")

    async def hit(self, user_id: str) -> Decision:
        index, retry_after = _window(time.time())
        key = f"{self.prefix}:{user_id}:{index}"
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.expire(key, WINDOW_SECONDS * 2)
                count, _ = await pipe.execute()
        except (redis.RedisError, OSError) as error:
            self._log.warning("rate_limit_unavailable", error=type(error).__name__)
            return Decision(True, 0)
        return Decision(int(count) <= self.per_minute, retry_after)

    async def close(self) -> None:
        await self._redis.aclose()


def build_rate_limiter(per_minute: int | None, redis_url: str | None) -> RateLimiter | None:
    if per_minute is None:
        return None
    if redis_url:
        return RedisRateLimiter(redis_url, per_minute)
    return MemoryRateLimiter(per_minute)
