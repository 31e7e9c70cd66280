"""Conversations: one run at a time per (user, session), history in, the completed turn out."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agents.items import TResponseInputItem
from fastapi import HTTPException

from servicekit.logging import get_logger

from ._backend import Backend
from ._guarded import Guarded, StoreUnavailable
from ._keys import conversation_key

log = get_logger("sessions")
TURN_AT = "_turn_at"  # set on a turn's user item in the store; removed before the model sees it
_POLL = 0.02


class Busy(HTTPException):
    """Another run of this conversation is still going (409)."""

    def __init__(self) -> None:
        super().__init__(409, "Another message of this conversation is still being answered; retry when it is done")


@dataclass(frozen=True, slots=True)
class TurnView:
    at: str
    text: str
    reply: str


def _strip(item: Any) -> TResponseInputItem:
    if isinstance(item, dict) and TURN_AT in item:
        return {k: v for k, v in item.items() if k != TURN_AT}  # type: ignore[return-value]
    return item  # type: ignore[no-any-return]


def _from_turn_start(items: list[Any]) -> list[Any]:
    # Trimming can cut a turn in half; a tool output without its call is refused by providers.
    for index, item in enumerate(items):
        if isinstance(item, dict) and item.get("role") == "user":
            return items[index:]
    return []


@dataclass
class Turn:
    """One run's view of its conversation: `history` to give the model, `complete` to store the turn."""

    history: list[TResponseInputItem]
    _conversations: Conversations
    _key: str
    _stored: int  # items the store holds for this conversation (as far as we know)
    _loaded: bool
    completed: bool = field(default=False)

    async def complete(self, new_items: list[TResponseInputItem]) -> None:
        """Store the turn (the user's item first, then the run's); a store failure is counted, not raised."""
        if not self._loaded or not new_items:
            return  # the store failed at load: the turn ran without history and is not stored
        first = {**new_items[0], TURN_AT: datetime.now(UTC).isoformat()}
        items: list[TResponseInputItem] = [first, *new_items[1:]]  # type: ignore[list-item]
        await self._conversations.store_turn(self._key, items, self._stored)
        self.completed = True


class Conversations:
    """Sessions keyed by (user, session id) over one `Backend`, or none when `backend` is None."""

    def __init__(
        self, backend: Backend | None, guarded: Guarded, *, max_items: int, lock_wait: float, lease: float, idempotency_ttl: float
    ) -> None:
        self.backend = backend
        self.guarded = guarded
        self.max_items = max_items
        self.lock_wait = lock_wait
        self.lease = lease
        self.idempotency_ttl = idempotency_ttl
        self._locks: dict[str, asyncio.Lock] = {}
        self._waiters: dict[str, int] = {}

    @asynccontextmanager
    async def turn(self, user_id: str, session_id: str) -> AsyncIterator[Turn]:
        """Hold the conversation for one run (409 `Busy` after `lock_wait`) and give its history."""
        key = conversation_key(user_id, session_id)
        started = time.monotonic()
        async with self._local(key), self._shared(key, self.lock_wait - (time.monotonic() - started)):
            history, stored, loaded = await self._load(key)
            yield Turn(history, self, key, stored, loaded)

    @asynccontextmanager
    async def _local(self, key: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._waiters[key] = self._waiters.get(key, 0) + 1
        try:
            try:
                async with asyncio.timeout(self.lock_wait):
                    await lock.acquire()
            except TimeoutError:
                raise Busy() from None
            try:
                yield
            finally:
                lock.release()
        finally:
            self._waiters[key] -= 1
            if not self._waiters[key]:
                del self._waiters[key], self._locks[key]

    @asynccontextmanager
    async def _shared(self, key: str, wait: float) -> AsyncIterator[None]:
        backend = self.backend
        if backend is None:
            yield
            return
        token = uuid.uuid4().hex
        deadline = time.monotonic() + max(wait, 0.0)
        try:
            while not await self.guarded.call("lock", lambda: backend.try_lock(key, token, self.lease)):
                if time.monotonic() >= deadline:
                    raise Busy()
                await asyncio.sleep(_POLL)
        except StoreUnavailable:
            # Without the store, the in-process lock is all there is: the chat still answers.
            yield
            return
        try:
            yield
        finally:
            with contextlib.suppress(StoreUnavailable):  # the lease frees it
                await asyncio.shield(self.guarded.call("unlock", lambda: backend.unlock(key, token)))

    async def _load(self, key: str) -> tuple[list[TResponseInputItem], int, bool]:
        if self.backend is None:
            return [], 0, False
        session = self.backend.session(key)
        try:
            raw = await self.guarded.call("load", session.get_items)
        except StoreUnavailable:
            return [], 0, False
        return [_strip(item) for item in _from_turn_start(raw)], len(raw), True

    async def store_turn(self, key: str, items: list[TResponseInputItem], stored: int) -> None:
        backend = self.backend
        assert backend is not None
        session = backend.session(key)
        try:
            await asyncio.shield(self.guarded.call("store", lambda: session.add_items(items)))
            if stored + len(items) > self.max_items:
                await asyncio.shield(self.guarded.call("trim", lambda: backend.trim(key, self.max_items)))
        except StoreUnavailable:
            pass  # counted and logged by `guarded`; the reply still goes out

    async def turns(self, user_id: str, session_id: str) -> list[TurnView]:
        """The conversation as turns with timestamps; raises `StoreUnavailable`."""
        if self.backend is None:
            return []
        session = self.backend.session(conversation_key(user_id, session_id))
        items = await self.guarded.call("read", session.get_items)
        return _as_turns(items)

    async def forget(self, user_id: str, session_id: str) -> None:
        """Delete the conversation; raises `StoreUnavailable`."""
        if self.backend is not None:
            session = self.backend.session(conversation_key(user_id, session_id))
            await self.guarded.call("delete", session.clear_session)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _as_turns(items: list[Any]) -> list[TurnView]:
    turns: list[TurnView] = []
    at, text, reply = "", "", ""
    for item in _from_turn_start(items):
        if not isinstance(item, dict):
            continue
        if item.get("role") == "user":
            if at or text:
                turns.append(TurnView(at, text, reply))
            at, text, reply = str(item.get(TURN_AT, "")), _text(item.get("content")), ""
        elif item.get("role") == "assistant" and item.get("type", "message") == "message":
            reply = _text(item.get("content"))  # the last message of the turn is its answer
    if at or text:
        turns.append(TurnView(at, text, reply))
    return turns
