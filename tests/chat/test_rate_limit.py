"""The chat rate limit: a moving window (no 2x at a window edge), shared through Redis, open when Redis is down."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as redis

from chat_service.rate_limit import REDIS_POLICY, MovingWindow, RateLimiter
from load_tests.faultproxy import Fault, FaultProxy
from load_tests.processes import free_port
from tests.conftest import REDIS_URL


async def wait_for_clock(condition: Callable[[float], bool], timeout: float = 5.0) -> None:
    """Poll the wall clock (the limiter's own time source) until `condition(time.time())`."""
    limit = time.monotonic() + timeout
    while not condition(time.time()):
        assert time.monotonic() < limit
        await asyncio.sleep(0.005)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def limiter(request) -> AsyncIterator[RateLimiter]:
    if request.param == "memory":
        limiter = RateLimiter(3, window=1)
    else:
        limiter = RateLimiter.in_redis(REDIS_URL, 3, window=1, prefix=f"test-{uuid.uuid4().hex}")
    yield limiter
    await limiter.close()


async def test_no_burst_gets_through_at_the_edge_of_a_window(limiter):
    # A fixed one-second window would let 3 hits in before a second's edge and 3 more after it.
    await wait_for_clock(lambda now: now % 1 > 0.7)
    first = time.time()
    assert [(await limiter.hit("u")).allowed for _ in range(3)] == [True, True, True]
    await wait_for_clock(lambda now: int(now) > int(first))  # the edge has passed
    denied = await limiter.hit("u")
    assert time.time() - first < 1.0, "precondition: still within one window of the first hit"
    assert not denied.allowed and denied.retry_after == 1
    assert (await limiter.hit("someone-else")).allowed, "limits are per key"
    await wait_for_clock(lambda now: now > first + 1.05)
    assert (await limiter.hit("u")).allowed, "a slot frees as the oldest hit leaves the window"


@pytest.mark.redis
async def test_two_chat_instances_share_the_limit_through_redis(tmp_path, chat_with, analytics_transport):
    prefix = f"test-{uuid.uuid4().hex}"
    shared = {"rate_limit_per_minute": 2, "redis_url": REDIS_URL, "rate_limit_prefix": prefix}
    async with (
        chat_with(analytics_transport, **shared) as first,
        chat_with(analytics_transport, **shared, outbox_path=str(tmp_path / "second.sqlite3")) as second,
    ):
        assert (await first.post("/chat/", json={"user_id": "ann", "text": "hi"})).status_code == 200
        assert (await second.post("/chat/", json={"user_id": "ann", "text": "hi"})).status_code == 200
        for chat in (first, second):
            limited = await chat.post("/chat/", json={"user_id": "ann", "text": "hi"})
            assert limited.status_code == 429 and limited.json() == {"detail": "Too many messages"}
            assert 1 <= int(limited.headers["retry-after"]) <= 60
        health = (await first.get("/health/dependencies")).json()
    assert health["rate_limit"] == {"storage": "redis", "breaker": "closed"}
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = await client.keys(f"{prefix}*")
        assert len(keys) == 1 and 0 < await client.ttl(keys[0]) <= 60
    finally:
        await client.aclose()


async def test_an_unreachable_redis_lets_chats_through_and_opens_the_breaker(chat_with, analytics_transport):
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    async with chat_with(analytics_transport, rate_limit_per_minute=1, redis_url=nowhere) as chat:
        statuses = {(await chat.post("/chat/", json={"user_id": "bob", "text": "hi"})).status_code for _ in range(6)}
        health = (await chat.get("/health/dependencies")).json()
    assert statuses == {200}
    assert health["rate_limit"] == {"storage": "redis", "breaker": "open"}


@pytest.mark.redis
async def test_a_blackholed_redis_costs_a_chat_microseconds_once_the_breaker_opens():
    host, port = REDIS_URL.removeprefix("redis://").split("/")[0].split(":")
    proxy = await FaultProxy((host, int(port))).start()
    policy = dataclasses.replace(REDIS_POLICY, breaker_reset=0.3)
    limiter = RateLimiter.in_redis(f"redis://127.0.0.1:{proxy.port}/0", 1, prefix=f"test-{uuid.uuid4().hex}", policy=policy)
    try:
        assert (await limiter.hit("u")).allowed
        proxy.set(Fault("blackhole"))
        costs = []
        for n in range(10):
            if n == 3:
                connections = proxy.connections
            started = time.monotonic()
            assert (await limiter.hit("u")).allowed, "fail open"
            costs.append(time.monotonic() - started)
        assert limiter.guard is not None and limiter.guard.breaker.state == "open"
        assert max(costs[:3]) < 0.25 + 0.5, costs  # the deadline, with a generous margin
        assert proxy.connections == connections, "with the breaker open, no call reaches the network"
        assert max(costs[3:]) < 0.2, costs  # far from the 0.25 s deadline each call paid before
        proxy.set(Fault("pass"))
        opened_by = time.time()
        await wait_for_clock(lambda now: now > opened_by + 0.3)  # the breaker lets a probe out
        assert not (await limiter.hit("u")).allowed, "back to counting: 1 a minute, already used"
        assert limiter.guard.breaker.state == "closed"
    finally:
        await limiter.close()
        await proxy.stop()


def test_the_in_process_window_refuses_until_the_oldest_hit_leaves_and_forgets_idle_users():
    now = [100.0]
    window = MovingWindow(2, 60, clock=lambda: now[0])
    assert window.hit("u") == 0 and window.hit("u") == 0
    now[0] += 10
    assert window.hit("u") == pytest.approx(50.0), "refused: the first hit leaves the window in 50 s"
    assert window.hit("v") == 0, "limits are per key"
    now[0] += 50
    assert window.hit("u") == 0
    now[0] += 121  # two windows with no hit from anyone: the next hit sweeps them away
    assert window.hit("w") == 0
    assert len(window) == 1
