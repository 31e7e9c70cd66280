"""The Redis store: the SDK's `RedisSession` for history (EXPIRE for the TTL), SET NX PX locks and records."""

from __future__ import annotations

from typing import Any

from agents.extensions.memory import RedisSession
from agents.memory import SessionSettings
from redis.asyncio import Redis

from ._backend import ComposedTurns, IdempotencyRecord
from ._turns import dump_item, keep_from, starts_turn_json

_PREFIX = "chat:session"
# SET NX PX that also succeeds (renewing the lease) when the lock already holds this token: a retry
# of a take that Redis applied but whose reply was lost must not find the conversation locked by
# its own run for the whole lease.
_LOCK = (
    "local held = redis.call('GET', KEYS[1]) if held == false or held == ARGV[1] then "
    "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end return 0"
)
# Compare-and-delete and compare-and-set: only the holder of the token may release or finish.
# A lock whose turn is stored reads `token:stored` (`_STORE_TURN`); its holder still unlocks it.
_UNLOCK = (
    "local held = redis.call('GET', KEYS[1]) if held == ARGV[1] or held == ARGV[1] .. ':stored' then "
    "return redis.call('DEL', KEYS[1]) end return 0"
)
# A turn's items, stored only by the lock's holder and only once: the same writes as the SDK's
# `RedisSession.add_items` (metadata hash, RPUSH, TTL on every key), and the lock is marked
# stored in the same script. A retry after a lost reply finds the mark and stores nothing again;
# a run whose lease ran out (another holds the lock) writes nothing. 1: stored now, 2: stored
# before, 0: not the holder.
_STORE_TURN = """
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] .. ':stored' then return 2 end
if held ~= ARGV[1] then return 0 end
if #ARGV > 3 then
  local now = redis.call('TIME')[1]
  redis.call('HSET', KEYS[2], 'session_id', ARGV[3])
  redis.call('HSETNX', KEYS[2], 'created_at', now)
  for i = 4, #ARGV do redis.call('RPUSH', KEYS[3], ARGV[i]) end
  redis.call('HSET', KEYS[2], 'updated_at', now)
  for i = 2, 4 do redis.call('PEXPIRE', KEYS[i], ARGV[2]) end
end
redis.call('SET', KEYS[1], ARGV[1] .. ':stored', 'KEEPTTL')
return 1
"""
_RELEASE = (
    "local r = redis.call('GET', KEYS[1]) if r and cjson.decode(r)['token'] == ARGV[1] then "
    "return redis.call('DEL', KEYS[1]) end return 0"
)
_FINISH = (
    "local r = redis.call('GET', KEYS[1]) if r and cjson.decode(r)['token'] == ARGV[1] then "
    "return redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end return 0"
)


class RedisBackend(ComposedTurns):
    """Takes a turn in two calls (lock, read); closes it in three (store and mark, trim, unlock),
    each safe to repeat: `Conversations.settle` retries a close whose reply was lost."""

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
        self._store_turn = self._redis.register_script(_STORE_TURN)

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

    async def close_turn(self, key: str, token: str, items: list[Any] | None, trim_to: int | None) -> None:
        serialized = [dump_item(item) for item in items or ()]
        names = [_lock_key(key), f"{_PREFIX}:{key}", f"{_PREFIX}:{key}:messages", f"{_PREFIX}:{key}:counter"]
        if not await self._store_turn(keys=names, args=[token, self._ttl * 1000, key, *serialized]):
            return  # not ours: the lease ran out and another run took the conversation; never interleave
        if trim_to is not None:
            await self.trim(key, trim_to)  # still under our lock; a retry trims again, which changes nothing
        await self.unlock(key, token)

    async def try_lock(self, key: str, token: str, lease: float) -> bool:
        return bool(await self._lock(keys=[_lock_key(key)], args=[token, _ms(lease)]))

    async def unlock(self, key: str, token: str) -> None:
        await self._unlock(keys=[_lock_key(key)], args=[token])

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


def _lock_key(key: str) -> str:
    return f"chat:lock:{key}"


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
