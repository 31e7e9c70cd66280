"""The Redis store: the SDK's `RedisSession` for history (EXPIRE for the TTL), SET NX PX locks and records."""

from __future__ import annotations

from typing import Any

from agents.extensions.memory import RedisSession
from agents.memory import SessionSettings
from redis.asyncio import Redis

from ._backend import IdempotencyRecord
from ._turns import dump_item, keep_from, load_items, starts_turn_json

_PREFIX = "chat:session"
# A turn is three scripts and, to trim, one read; each script checks the lock in the step that writes.
#
# The take: the history and the lock (SET PX) in one step, or nil while another run holds it; the
# read comes first, so a take that fails (a key of the wrong type) writes nothing. The
# lock is taken when free or already held by this token (renewing the lease): a retry of a take
# that Redis applied but whose reply was lost must not find the conversation locked by its own run.
_TAKE = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return false end
local items = redis.call('LRANGE', KEYS[2], 0, -1)
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return items
"""
# The store: a turn's items, written only by the lock's holder and only once. The same writes as
# the SDK's `RedisSession.add_items` (metadata hash, RPUSH, TTL on every key), checked for the keys'
# types first so that nothing is half-written, and the lock marked `token:stored` in the same step.
# A retry after a lost reply finds the mark and stores nothing again; a run whose lease ran out
# (another holds the lock) writes nothing. 1: stored now, 2: stored before, 0: not the holder.
_STORE_TURN = """
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] .. ':stored' then return 2 end
if held ~= ARGV[1] then return 0 end
if #ARGV > 3 then
  local kinds = {'hash', 'list', 'string'}
  for i = 2, 4 do
    local kind = redis.call('TYPE', KEYS[i]).ok
    if kind ~= 'none' and kind ~= kinds[i - 1] then return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' is a ' .. kind) end
  end
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
# The end: trim the list to start at index ARGV[2] (0: keep it all) and free the lock, only while
# this token holds it. The index was counted from a read after the store, under the same lock.
_END_TURN = """
local held = redis.call('GET', KEYS[1])
if held ~= ARGV[1] and held ~= ARGV[1] .. ':stored' then return 0 end
if tonumber(ARGV[2]) > 0 then redis.call('LTRIM', KEYS[2], ARGV[2], -1) end
redis.call('DEL', KEYS[1])
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


class RedisBackend:
    """Takes a turn in one call (lock and read); closes it in two or three (store and mark, the
    read a trim needs, trim and unlock), each safe to repeat: `Conversations.settle` retries a
    close whose reply was lost."""

    name = "redis"
    calls_suspend = True

    def __init__(self, url: str, *, ttl: float, timeout: float) -> None:
        self._redis = Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._settings = SessionSettings()  # no limit: a read takes every item, and trimming bounds them
        self._ttl = max(1, round(ttl))
        self._take = self._redis.register_script(_TAKE)
        self._store_turn = self._redis.register_script(_STORE_TURN)
        self._end_turn = self._redis.register_script(_END_TURN)
        self._release = self._redis.register_script(_RELEASE)
        self._finish = self._redis.register_script(_FINISH)

    async def start(self) -> None:
        """Nothing to create; a Redis that is down now is a store failure later, not a failed start."""

    async def close(self) -> None:
        await self._redis.aclose()

    def session(self, key: str) -> RedisSession:
        return RedisSession(key, redis_client=self._redis, key_prefix=_PREFIX, ttl=self._ttl, session_settings=self._settings)

    async def trim(self, key: str, keep: int) -> None:
        first = await self._first_kept(key, keep)
        if first:
            await self._redis.ltrim(_messages_key(key), first, -1)  # past the end: the list is emptied (deleted)

    async def _first_kept(self, key: str, keep: int) -> int:
        raw: list[bytes | str] = await self._redis.lrange(_messages_key(key), 0, -1)
        return keep_from([starts_turn_json(item) for item in raw], keep)

    async def open_turn(self, key: str, token: str, lease: float) -> list[Any] | None:
        raw: list[bytes] | None = await self._take(keys=[_lock_key(key), _messages_key(key)], args=[token, _ms(lease)])
        return None if raw is None else load_items(raw)

    async def close_turn(self, key: str, token: str, items: list[Any] | None, trim_to: int | None) -> None:
        serialized = [dump_item(item) for item in items or ()]
        names = [_lock_key(key), f"{_PREFIX}:{key}", _messages_key(key), f"{_PREFIX}:{key}:counter"]
        if not await self._store_turn(keys=names, args=[token, self._ttl * 1000, key, *serialized]):
            return  # not ours: the lease ran out and another run took the conversation; never interleave
        # Read under our lock; the end trims only if the lock is still ours, so no other run has
        # appended or trimmed since. A retry reads and trims again, which changes nothing.
        first = 0 if trim_to is None else await self._first_kept(key, trim_to)
        await self._end_turn(keys=[_lock_key(key), _messages_key(key)], args=[token, first])

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


def _messages_key(key: str) -> str:
    return f"{_PREFIX}:{key}:messages"


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
