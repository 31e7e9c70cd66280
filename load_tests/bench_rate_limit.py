"""What a chat's rate-limit check costs in process: `uv run python -m load_tests.bench_rate_limit`.

Paces hits at `--rate` a second over N users for each storage and prints the process CPU per hit,
less the pacing loop's own cost: our `MovingWindow`, and `limits`' sync and asyncio memory
storages (whose expiry sweeps are what made us keep our own in process).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time
from collections.abc import Awaitable, Callable

from limits import RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage as AsyncMemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter as AsyncMovingWindow
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from chat_service.rate_limit import RateLimiter

Hit = Callable[[str], Awaitable[object]]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _paced(hit: Hit, users: int, rate: float, seconds: float) -> float:
    count = int(rate * seconds)
    started_cpu, started = _cpu(), time.monotonic()
    for n in range(count):
        await hit(f"user-{n % users}")
        delay = started + (n + 1) / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    return (_cpu() - started_cpu) / count * 1e6


def _storages() -> dict[str, Callable[[], Hit]]:
    item = RateLimitItemPerSecond(1_000_000, 60)

    def ours() -> Hit:
        return RateLimiter(1_000_000).hit

    def limits_sync() -> Hit:
        limiter = MovingWindowRateLimiter(MemoryStorage())

        async def hit(key: str) -> bool:
            return limiter.hit(item, key)

        return hit

    def limits_async() -> Hit:
        limiter = AsyncMovingWindow(AsyncMemoryStorage())
        return lambda key: limiter.hit(item, key)

    return {"ours (MovingWindow)": ours, "limits sync memory": limits_sync, "limits asyncio memory": limits_async}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--users", type=int, nargs="+", default=[10, 1000, 10000])
    args = parser.parse_args()

    async def nothing(_: str) -> None:
        return None

    pacing = await _paced(nothing, 10, args.rate, args.seconds)
    print(f"pacing loop alone: {pacing:.1f} us per hit (subtracted below)")
    for users in args.users:
        for name, make in _storages().items():
            cost = await _paced(make(), users, args.rate, args.seconds) - pacing
            print(f"{users:>6} users  {name:<24} {cost:7.1f} us CPU per hit", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
