"""Idempotency-Key for chats: the same key and body answer the stored reply; the model runs once."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from fastapi import HTTPException

from ._backend import IdempotencyRecord
from ._conversations import Conversations
from ._guarded import StoreUnavailable
from ._keys import fingerprint, holder_token, idempotency_key, record_id


class KeyInFlight(HTTPException):
    def __init__(self) -> None:
        super().__init__(409, "A request with this Idempotency-Key is still being answered; retry when it is done")


class KeyReused(HTTPException):
    def __init__(self) -> None:
        # The validation-error shape every 422 of the API has.
        issue = {
            "loc": ["header", "Idempotency-Key"],
            "msg": "This key was used with a different request body",
            "type": "key_reused",
        }
        super().__init__(422, [issue])


class Claim:
    """One request's hold on its key. `replay` is the stored reply when there is one.

    Use as `async with claim:` around the run: leaving without `finish` (a failed run) releases
    the key, so a retry runs again. Without a key, or with the store down, every call is a no-op.
    """

    def __init__(self, conversations: Conversations | None, key: str | None, token: str, record_id: str | None) -> None:
        self._conversations = conversations
        self._key = key
        self._token = token
        self.record_id = record_id
        self.replay: str | None = None
        self._done = False

    async def finish(self, reply: str) -> None:
        """Keep `reply` for CHAT_IDEMPOTENCY_TTL; a store failure is counted, not raised.

        A finish that fails is tried again in the background (`Conversations.settle`): else the key
        would stay in flight, and the client's retry answer 409, until the lease ends, and then run
        the model again. Storing the reply again is safe: each store writes only the record our
        token holds, and writes the same reply.
        """
        self._done = True
        conversations, key = self._conversations, self._key
        if conversations is None or key is None or conversations.backend is None:
            return
        backend, token, ttl = conversations.backend, self._token, conversations.idempotency_ttl
        await conversations.settle("idempotency_finish", lambda: backend.finish(key, token, reply, ttl), frees_only=False)

    async def abandon(self) -> None:
        self._done = True
        conversations, key = self._conversations, self._key
        if conversations is None or key is None or conversations.backend is None:
            return
        backend, token = conversations.backend, self._token
        # A release that fails is tried again in the background: else the retry of this failed run
        # would answer 409 until the lease ends.
        await conversations.settle("idempotency_release", lambda: backend.release(key, token), frees_only=True)

    async def __aenter__(self) -> Claim:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if not self._done:
            await self.abandon()


async def begin(conversations: Conversations, user_id: str, key: str | None, body: dict[str, Any]) -> Claim:
    """Claim `key` for this request: a `Claim` to run under, or 409 `KeyInFlight` / 422 `KeyReused`."""
    if key is None:
        return Claim(None, None, "", None)
    store_key = idempotency_key(user_id, key)
    claim = Claim(conversations, store_key, holder_token(), record_id(user_id, key))
    backend = conversations.backend
    if backend is None:
        return claim
    mine = IdempotencyRecord(claim._token, fingerprint(body))
    try:
        # A claim whose reply is lost, or cut short by a cancelled request, frees our token in the
        # background (`Conversations.take`): else the client's retry would answer 409 until the lease ends.
        live = await conversations.take(
            "idempotency_claim",
            lambda: backend.claim(store_key, mine, conversations.lease),
            holds=lambda live: live is None,  # None: stored (ours); else another request's live record
            free_operation="idempotency_release",
            free=lambda: backend.release(store_key, mine.token),
        )
    except StoreUnavailable:
        # Without the store the model may run twice, but the record id still counts the message once.
        return Claim(None, None, "", claim.record_id)
    if live is None:
        return claim
    if live.fingerprint != mine.fingerprint:
        raise KeyReused()
    if live.reply is None:
        raise KeyInFlight()
    claim.replay = live.reply
    claim._done = True
    return claim
