"""Tokens that already verified, so a user's next chats skip the signature check.

Verifying a token costs ~37 us (HS256) to ~96 us (ES256, ~70 us of it the P-256 check in OpenSSL),
measured by `load_tests.bench_auth`; a hit costs 0.5 us, and a user sends many chats with one
token. Envoy's jwt_authn caches verified tokens the same way (`jwt_cache_config`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, NamedTuple, TypeVar

T = TypeVar("T")


class _Entry(NamedTuple, Generic[T]):
    caller: T
    expires: float  # the token's exp plus the leeway: a hit past it is a miss
    keys: object  # the key set that verified it: a hit under another key set is a miss


class VerifiedTokens(Generic[T]):
    """At most `size` verified tokens, keyed by the exact token string; the oldest go first.

    A hit is only served while the token has not expired (leeway included) and the key set that
    verified it is still the current one, so a key the provider withdrew stops verifying at once.
    Only tokens that verified are stored: garbage cannot fill it.
    """

    def __init__(self, size: int, *, clock: Callable[[], float] = time.time) -> None:
        self._size = size
        self._clock = clock
        self._entries: dict[str, _Entry[T]] = {}

    def get(self, token: str, keys: object) -> T | None:
        entry = self._entries.get(token)
        if entry is None:
            return None
        if entry.keys is keys and self._clock() < entry.expires:
            return entry.caller
        del self._entries[token]
        return None

    def put(self, token: str, caller: T, expires: float, keys: object) -> None:
        if self._size <= 0:
            return
        if len(self._entries) >= self._size:
            del self._entries[next(iter(self._entries))]
        self._entries[token] = _Entry(caller, expires, keys)

    def __len__(self) -> int:
        return len(self._entries)
