"""Per-user chat limits over a moving window: in process by default, in Redis (the `limits`
library) when `CHAT_REDIS_URL` is set, shared by every replica.

A moving window counts the hits of the last `window` seconds at every moment, so no window edge
lets twice the limit through (a fixed one-minute window did: a burst at 0:59 and another at 1:01).

In process, `MovingWindow` below keeps each key's recent hit times itself. `limits`' own memory
storages were measured first (`python -m load_tests.bench_rate_limit`, 1,000 hits/s over 10 to
10,000 users): their expiry sweeps cost 36-102 us (sync: a timer thread scanning every key every
10 ms) and 300-680 us (asyncio: a thread hop per key per sweep) of CPU per hit; this costs 5-21 us.

When Redis cannot be reached the limiter lets the chat through: it guards a bill, and turning a
Redis outage into a chat outage would be the worse trade. Its calls pass a `resilience`
pipeline (a short deadline, a breaker), so while Redis is down a chat costs microseconds, not a
connect timeout.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import NamedTuple, TypeVar

import redis.asyncio as redis
from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import RedisStorage, Storage
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


class MovingWindow:
    """In-process moving window: each key's hit times of the last `window` seconds.

    A hit drops its key's expired times first (amortized O(1)); keys nobody used for a whole
    window are swept once per window, so memory follows the active users.
    """

    def __init__(self, limit: int, window: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._next_sweep = clock() + window

    def __len__(self) -> int:
        return len(self._hits)

    def hit(self, key: str) -> float:
        """Count a hit and return 0, or refuse it and return the seconds until a slot frees."""
        now = self._clock()
        if now >= self._next_sweep:
            self._sweep(now)
        hits = self._hits.get(key)
        if hits is None:
            hits = self._hits[key] = deque()
        cutoff = now - self.window
        while hits and hits[0] <= cutoff:
            hits.popleft()
        if len(hits) >= self.limit:
            return hits[0] - cutoff
        hits.append(now)
        return 0.0

    def _sweep(self, now: float) -> None:
        cutoff = now - self.window
        for key in [key for key, hits in self._hits.items() if not hits or hits[-1] <= cutoff]:
            del self._hits[key]
        self._next_sweep = now + self.window


class RateLimiter:
    """`hit(key)` counts one chat for `key` and says whether it may go ahead, and if not, when.

    In process (`storage` None) or in a `limits` storage (Redis), guarded by `guard`.
    """

    def __init__(
        self, per_window: int, storage: Storage | None = None, *, window: int = WINDOW_SECONDS, guard: Pipeline | None = None
    ) -> None:
        self.item: RateLimitItem = RateLimitItemPerSecond(per_window, window)
        self.storage = storage
        self.guard = guard
        self._local = MovingWindow(per_window, window) if storage is None else None
        self._limiter = None if storage is None else MovingWindowRateLimiter(storage)
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
            "async+" + url,
            implementation="redispy",
            key_prefix=prefix,
            connection_pool=pool,  # type: ignore[arg-type]
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
        if self._local is not None:
            wait = self._local.hit(key)
            return Decision(True, 0) if wait == 0 else Decision(False, max(1, math.ceil(wait)))
        limiter = self._limiter
        assert limiter is not None
        allowed = await self._call(lambda: limiter.hit(self.item, key))
        if allowed is None or allowed:
            return Decision(True, 0)
        stats = await self._call(lambda: limiter.get_window_stats(self.item, key))
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
    return RateLimiter(per_minute)
