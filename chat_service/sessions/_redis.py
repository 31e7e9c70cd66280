"""The Redis store: the SDK's `RedisSession` for history (EXPIRE for the TTL), SET NX PX locks and records."""

from __future__ import annotations

from agents.extensions.memory import RedisSession
from agents.memory import SessionSettings
from redis.asyncio import Redis

from ._backend import ComposedTurns, IdempotencyRecord
from ._turns import keep_from, starts_turn_json

_PREFIX = "chat:session"
# SET NX PX that also succeeds (renewing the lease) when the lock already holds this token: a retry
# of a take that Redis applied but whose reply was lost must not find the conversation locked by
# its own run for the whole lease.
_LOCK = (
    "local held = redis.call('GET', KEYS[1]) if held == false or held == ARGV[1] then "
    "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end return 0"
)
# Compare-and-delete and compare-and-set: only the holder of the token may release or finish.
_UNLOCK = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
_RELEASE = (
    "local r = redis.call('GET', KEYS[1]) if r and cjson.decode(r)['token'] == ARGV[1] then "
    "return redis.call('DEL', KEYS[1]) end return 0"
)
_FINISH = (
    "local r = redis.call('GET', KEYS[1]) if r and cjson.decode(r)['token'] == ARGV[1] then "
    "return redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end return 0"
)


class RedisBackend(ComposedTurns):
    name = "redis"
    calls_suspend = True

    def __init__(self, url: str, *, ttl: float, timeout: float) -> None:
        self._redis = Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._settings = SessionSettings()  # no limit: a read takes every item, and trimming bounds them
        self._ttl = max(1, round(ttl))
        self._lock = self._redis.register_script(_LOCK)
        self._unlock = self._redis.register_script(_UNLOCK)
        self._release = self._redis.register_script(_RELEASE)
        self._finish = self._redis.register_script(_FINISH)

    async def start(self) -> None:
        """Nothing to create; a Redis that is down now is a store failure later, not a failed start."""

    async def close(self) -> None:
        await self._redis.aclose()

    def session(self, key: str) -> RedisSession:
        return RedisSession(key, redis_client=self._redis, key_prefix=_PREFIX, ttl=self._ttl, session_settings=self._settings)

    async def trim(self, key: str, keep: int) -> None:
        # Two calls, not one script: the conversation's lock is held, so nothing else trims it
        # meanwhile, and an index counted from the head stays right if an item is appended.
        name = f"{_PREFIX}:{key}:messages"
        raw: list[bytes | str] = await self._redis.lrange(name, 0, -1)
        first = keep_from([starts_turn_json(item) for item in raw], keep)
        if first:
            await self._redis.ltrim(name, first, -1)  # past the end: the list is emptied (deleted)

    async def try_lock(self, key: str, token: str, lease: float) -> bool:
        return bool(await self._lock(keys=[f"chat:lock:{key}"], args=[token, _ms(lease)]))

    async def unlock(self, key: str, token: str) -> None:
        await self._unlock(keys=[f"chat:lock:{key}"], args=[token])

    async def claim(self, key: str, record: IdempotencyRecord, lease: float) -> IdempotencyRecord | None:
        name = f"chat:idem:{key}"
        if await self._redis.set(name, record.dumps(), nx=True, px=_ms(lease)):
            return None
        raw = await self._redis.get(name)
        if raw is None:  # expired or released between the two calls: free again
            return await self.claim(key, record, lease)
        live = IdempotencyRecord.loads(raw)
        # Our own record: a retried claim whose first SET NX was applied but its reply lost.
        return None if live.token == record.token else live

    async def finish(self, key: str, token: str, reply: str, ttl: float) -> None:
        name = f"chat:idem:{key}"
        raw = await self._redis.get(name)
        if raw is None:
            return
        record = IdempotencyRecord(token, IdempotencyRecord.loads(raw).fingerprint, reply)
        await self._finish(keys=[name], args=[token, record.dumps(), _ms(ttl)])

    async def release(self, key: str, token: str) -> None:
        await self._release(keys=[f"chat:idem:{key}"], args=[token])


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
