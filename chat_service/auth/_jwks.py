"""The identity provider's keys: fetched asynchronously, cached, refreshed, served from cache when it is down."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Iterable

import httpx
from jwt import PyJWK

from servicekit.logging import get_logger

from ._errors import InvalidToken, KeysUnavailable
from ._keys import KeySet, parse_jwks

FetchHook = Callable[[str], None]


class JwksKeys:
    """A JWKS URL's keys, for one process; configured once in the lifespan, shared by every request.

    - `start()` fetches once (a failure is logged, never raised: start-up does not depend on the
      identity provider) and then refetches every `refresh_seconds` in the background.
    - A token whose `kid` is not cached triggers a fetch, at most one per `cooldown_seconds`
      (so a flood of made-up kids cannot hammer the identity provider); concurrent requests
      share the fetch in flight instead of starting their own.
    - A failed fetch (unreachable, timeout, non-2xx, not a JWK set, no usable key) keeps the
      keys already cached, for as long as it takes; a successful one replaces them, so a key the
      provider withdrew stops verifying at the next refresh.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str,
        *,
        algorithms: Iterable[str],
        refresh_seconds: float = 300.0,
        cooldown_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        on_fetch: FetchHook | None = None,
    ) -> None:
        self._client = client
        self._url = url
        self._algorithms = frozenset(algorithms)
        self._refresh_seconds = refresh_seconds
        self._cooldown = cooldown_seconds
        self._clock = clock
        self._on_fetch = on_fetch
        self._keys: KeySet | None = None
        self._last_attempt = -math.inf
        self._in_flight: asyncio.Task[bool] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._log = get_logger("auth")

    @property
    def loaded(self) -> bool:
        """True once a fetch has succeeded (the keys then stay, whatever later fetches do)."""
        return self._keys is not None

    @property
    def current(self) -> KeySet | None:
        """The key set in use; the same object until a fetch brings different keys."""
        return self._keys

    async def start(self) -> None:
        succeeded = await self.refresh()
        self._refresher = asyncio.create_task(self._keep_fresh(succeeded), name="jwks-refresher")

    async def aclose(self) -> None:
        for task in (self._refresher, self._in_flight):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def retry_after(self) -> float:
        """Seconds until the next fetch may start (the refresher retries once per cooldown), at least 1."""
        return max(1.0, self._last_attempt + self._cooldown - self._clock())

    async def key_for(self, kid: str | None, alg: str) -> PyJWK:
        """The key that verifies a token with this `kid` and `alg`; raises InvalidToken or KeysUnavailable."""
        keys = self._keys
        if keys is not None:
            found = keys.find(kid, alg)
            if found is not None:
                return found
            if keys.knows(kid):
                raise InvalidToken("key_mismatch", "The token's algorithm does not fit its signing key")
        if self._in_flight is not None or self._clock() - self._last_attempt >= self._cooldown:
            await self.refresh()
            keys = self._keys
            found = None if keys is None else keys.find(kid, alg)
            if found is not None:
                return found
        if keys is None:
            raise KeysUnavailable(self.retry_after())
        raise InvalidToken("unknown_key", "Unknown signing key")

    async def refresh(self) -> bool:
        """Fetch the key set now, or join the fetch already in flight; True when it succeeded."""
        if self._in_flight is None:
            self._last_attempt = self._clock()
            self._in_flight = asyncio.create_task(self._fetch(), name="jwks-fetch")
            self._in_flight.add_done_callback(self._fetch_done)
        # Shielded: a request that gives up (client gone) must not cancel the fetch others wait for.
        return await asyncio.shield(self._in_flight)

    def _fetch_done(self, task: asyncio.Task[bool]) -> None:
        if self._in_flight is task:
            self._in_flight = None

    async def _fetch(self) -> bool:
        try:
            response = await self._client.get(self._url)
            response.raise_for_status()
            keys = parse_jwks(response.json(), self._algorithms)
        except httpx.HTTPError as error:
            return self._failed("unreachable" if not isinstance(error, httpx.HTTPStatusError) else "status", error)
        except (ValueError, RecursionError) as error:
            return self._failed("invalid", error)
        if self._keys is None or keys.fingerprint != self._keys.fingerprint:
            self._keys = keys  # a new object: tokens verified under the old keys get checked again
        self._log.info("jwks_refreshed", keys=len(keys))
        self._notify("ok")
        return True

    def _failed(self, outcome: str, error: BaseException) -> bool:
        self._log.warning("jwks_refresh_failed", outcome=outcome, error=type(error).__name__, cached=self.loaded)
        self._notify(outcome)
        return False

    def _notify(self, outcome: str) -> None:
        if self._on_fetch is not None:
            self._on_fetch(outcome)

    async def _keep_fresh(self, succeeded: bool) -> None:
        while True:
            # After a failure (or before the first success) retry once per cooldown, else once per period.
            await asyncio.sleep(self._refresh_seconds if succeeded else self._cooldown)
            succeeded = await self.refresh()
