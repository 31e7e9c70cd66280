"""Per-user chat limits over a moving window (the `limits` library), in Redis when configured.

A moving window counts the hits of the last `window` seconds at every moment, so no window edge
lets twice the limit through (a fixed one-minute window did: a burst at 0:59 and another at
1:01). In process by default; in Redis when `CHAT_REDIS_URL` is set, shared by every replica.

When Redis cannot be reached the limiter lets the chat through: it guards a bill, and turning a
Redis outage into a chat outage would be the worse trade. Its calls pass a `resilience`
pipeline (a short deadline, a breaker), so while Redis is down a chat costs microseconds, not a
connect timeout.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple, TypeVar

import redis.asyncio as redis
from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from resilience import Event, Failure, Fallback, Pipeline, Policy
from servicekit.logging import get_logger

T = TypeVar("T")

WINDOW_SECONDS = 60

# Redis is a local, fast dependency: one attempt, a quarter second at most, and after three
# failures in a row no call at all for five seconds (then one probe).
REDIS_POLICY = Policy(
    deadline=0.25, attempts=1, breaker_mode="consecutive", breaker_failures=3, breaker_reset=5.0, bulkhead=10_000
)


class Decision(NamedTuple):
    allowed: bool
    retry_after: int


def classify_redis(error: BaseException) -> Failure | None:
    """The `on=` predicate for Redis calls: an unreachable or slow Redis is transient."""
    if isinstance(error, TimeoutError | redis.TimeoutError):
        return Failure("timeout", transient=True)
    if isinstance(error, redis.ConnectionError | OSError):
        return Failure("connect", transient=True)
    if isinstance(error, redis.RedisError):
        return Failure("invalid_response", transient=False)  # Redis answered, with an error
    return None


class RateLimiter:
    """`hit(key)` counts one chat for `key` and says whether it may go ahead, and if not, when."""

    def __init__(
        self, per_window: int, storage: Storage, *, window: int = WINDOW_SECONDS, guard: Pipeline | None = None
    ) -> None:
        self.item: RateLimitItem = RateLimitItemPerSecond(per_window, window)
        self.storage = storage
        self.guard = guard
        self._limiter = MovingWindowRateLimiter(storage)
        self._pool: redis.ConnectionPool | None = None

    @classmethod
    def in_redis(
        cls,
        url: str,
        per_window: int,
        *,
        window: int = WINDOW_SECONDS,
        prefix: str = "chat-rate",
        policy: Policy = REDIS_POLICY,
    ) -> RateLimiter:
        pool = redis.ConnectionPool.from_url(url, socket_timeout=0.2, socket_connect_timeout=0.2)
        storage = RedisStorage(
            "async+" + url, implementation="redispy", key_prefix=prefix, connection_pool=pool  # type: ignore[arg-type]
        )
        log = get_logger("rate_limit")

        def on_event(event: Event) -> None:
            # Only Redis's comings and goings are news; a chat let through is not.
            if event.name == "breaker_opened" and event.fields["previous"] == "closed":
                log.warning("rate_limit_unavailable", redis="unreachable", letting_chats_through=True)
            elif event.name == "breaker_closed":
                log.info("rate_limit_available")

        guard = Pipeline("redis-rate-limit", policy, on=classify_redis, hooks=(on_event,))
        limiter = cls(per_window, storage, window=window, guard=guard)
        limiter._pool = pool
        return limiter

    async def hit(self, key: str) -> Decision:
        allowed = await self._call(lambda: self._limiter.hit(self.item, key))
        if allowed is None or allowed:
            return Decision(True, 0)
        stats = await self._call(lambda: self._limiter.get_window_stats(self.item, key))
        wait = self.item.get_expiry() if stats is None else stats.reset_time - time.time()
        return Decision(False, max(1, math.ceil(wait)))

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()

    async def _call(self, operation: Callable[[], Awaitable[T]]) -> T | None:
        """Run a storage call, through the guard when there is one; None when Redis failed."""
        if self.guard is None:
            return await operation()
        outcome = await self.guard.call(lambda _: operation(), idempotent=False)
        return None if isinstance(outcome, Fallback) else outcome.value


def build_rate_limiter(per_minute: int | None, redis_url: str | None, *, prefix: str = "chat-rate") -> RateLimiter | None:
    if per_minute is None:
        return None
    if redis_url:
        return RateLimiter.in_redis(redis_url, per_minute, prefix=prefix)
    return RateLimiter(per_minute, MemoryStorage())
