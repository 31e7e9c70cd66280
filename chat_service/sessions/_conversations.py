"""Conversations: one run at a time per (user, session), history in, the completed turn out."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from agents.items import TResponseInputItem
from fastapi import HTTPException

from servicekit.logging import get_logger

from ._backend import Backend
from ._guarded import Guarded, StoreUnavailable
from ._keys import conversation_key, holder_token
from ._turns import whole_turns

T = TypeVar("T")
log = get_logger("sessions")
TURN_AT = "_turn_at"  # set on a turn's user item in the store; removed before the model sees it
_POLL = 0.02
# A turn whose close failed (say, another writer held SQLite's file a moment too long) is stored, and its
# conversation freed, by these later tries; without them the lock would wait out its whole lease. A lock
# take or key claim that failed, a failed release of a key and a key's failed finish (its reply), use the
# same schedule.
CLOSE_RETRIES = (0.1, 0.5, 2.0)
# A take or claim cut short by a cancelled request, once it returned in the background holding the lock or
# key: free its token at once. One that failed frees on `CLOSE_RETRIES`: its write may still be on its way
# to the store (a COMMIT whose reply was late), and a free sent ahead of it would free nothing.
FREE_RETRIES = (0.0, *CLOSE_RETRIES)


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


@dataclass
class Turn:
    """One run's view of its conversation: `history` to give the model, `complete` to store the turn."""

    history: list[TResponseInputItem]
    _conversations: Conversations
    _key: str
    _token: str
    _stored: int  # items the store holds for this conversation (as far as we know)
    _loaded: bool  # False when the store failed: the turn runs without history and is not stored
    completed: bool = field(default=False)
    closed: bool = field(default=False)

    async def complete(self, new_items: list[TResponseInputItem]) -> None:
        """Store the turn (the user's item first, then the run's) and free the conversation.

        A store failure is counted and logged, not raised: the reply still goes out.
        """
        self.completed = True
        if not new_items:
            return
        first = {**new_items[0], TURN_AT: datetime.now(UTC).isoformat()}
        items: list[TResponseInputItem] = [first, *new_items[1:]]  # type: ignore[list-item]
        await self._conversations.close(self, items)


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
        self._pending: set[asyncio.Future[Any]] = set()  # background store work `drain` waits for

    @asynccontextmanager
    async def turn(self, user_id: str, session_id: str | None) -> AsyncIterator[Turn]:
        """Hold the conversation for one run (409 `Busy` after `lock_wait`) and give its history.

        `session_id` None: a one-off message, with no history, no lock and nothing stored.
        """
        if session_id is None:
            yield Turn([], self, "", "", 0, False, closed=True)
            return
        key = conversation_key(user_id, session_id)
        deadline = time.monotonic() + self.lock_wait
        async with self._local(key):
            turn = await self._open(key, deadline)
            try:
                yield turn
            finally:
                if not turn.closed:  # a failed or cancelled run: free the conversation, store nothing
                    await self.close(turn, None)

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

    async def _open(self, key: str, deadline: float) -> Turn:
        """Take the shared lock and read the history in one store call (polled until `deadline`)."""
        backend = self.backend
        token = holder_token()
        if backend is None:
            return Turn([], self, key, token, 0, False, closed=True)

        async def take_lock() -> list[Any] | None:
            return await backend.open_turn(key, token, self.lease)

        async def free() -> None:  # frees the lock if our token holds it; stores nothing
            await backend.close_turn(key, token, None, None)

        def holds(raw: list[Any] | None) -> bool:
            return raw is not None  # None: another run holds the conversation, we hold nothing

        try:
            while (raw := await self.take("open", take_lock, holds=holds, free_operation="close", free=free)) is None:
                if time.monotonic() >= deadline:
                    raise Busy()
                await asyncio.sleep(_POLL)
        except StoreUnavailable:
            # Without the store, the in-process lock is all there is: the chat still answers.
            return Turn([], self, key, token, 0, False, closed=True)
        # The store holds whole turns already; this also mends one trimmed mid-turn by an older
        # version, or holding more than a lowered CHAT_SESSION_MAX_ITEMS (the next close trims it).
        return Turn([_strip(item) for item in whole_turns(raw, self.max_items)], self, key, token, len(raw), True)

    async def take(
        self,
        operation: str,
        call: Callable[[], Awaitable[T]],
        *,
        holds: Callable[[T], bool],
        free_operation: str,
        free: Callable[[], Awaitable[object]],
    ) -> T:
        """Run a lock take or a key claim (`call`); `free` frees our token when the caller cannot know whether it holds it.

        `holds(result)`: whether a take that returned `result` holds the lock or key (not when it
        found another request's). In two cases the store may have applied the take without the
        caller learning so, and the conversation or key would then answer 409 until the lease runs out:
        - the call failed (a timeout, a reset; not the breaker's refusal, which sends nothing): it
          may have been applied and only its reply lost; `StoreUnavailable` is raised as before and
          our token is freed in the background (`retry_later`);
        - the request was cancelled mid-call (the client left, admission cancelled the run): the
          call goes on in the background, so it is never cut between applied and answered, and
          when it ends (bounded by the store timeout) our token is freed (`_free_after_cut`).
          The request itself ends at once, without waiting for the store.
        A store whose calls never give the loop away (`Backend.calls_suspend` False: SQLite) cannot
        be cut mid-call, so its takes run directly, without the task that costs ~10 us each.
        """
        attempt: asyncio.Future[T] | None = None
        if self.backend is not None and self.backend.calls_suspend:
            attempt = asyncio.ensure_future(self.guarded.call(operation, call))
        try:
            return await (self.guarded.call(operation, call) if attempt is None else asyncio.shield(attempt))
        except StoreUnavailable as failure:
            if failure.reason != "breaker_open":
                self.retry_later(free_operation, free, frees_only=True)
            raise
        except asyncio.CancelledError:
            if attempt is not None:  # else the call ran whole before the cancellation landed
                self._background(self._free_after_cut(attempt, holds, free_operation, free))
            raise

    async def _free_after_cut(
        self,
        attempt: asyncio.Future[T],
        holds: Callable[[T], bool],
        operation: str,
        free: Callable[[], Awaitable[object]],
    ) -> None:
        """Free the token of a take whose request was cancelled, once the take ended in the background."""
        try:
            result = await attempt  # the take, going on past its cancelled request; `guarded` counts a failure
        except StoreUnavailable as failure:
            if failure.reason == "breaker_open":
                return  # refused before anything was sent: nothing to free
            # It may yet be applied (its write still on its way): free after CLOSE_RETRIES' first pause.
            await self._retry(operation, free, True, CLOSE_RETRIES, done_event="session_cut_call_freed")
            return
        if holds(result):  # applied, and nobody left to use it
            await self._retry(operation, free, True, FREE_RETRIES, done_event="session_cut_call_freed")

    async def close(self, turn: Turn, items: list[TResponseInputItem] | None) -> None:
        """Store `items` (when given), trim to whole turns within `max_items`, free the shared lock: one store call."""
        backend = self.backend
        if turn.closed or backend is None:
            return
        turn.closed = True
        over = items is not None and turn._stored + len(items) > self.max_items
        key, token, trim_to = turn._key, turn._token, self.max_items if over else None
        owned = None if items is None else list(items)  # the caller's list may change; retries send this one
        await self.settle("close", lambda: backend.close_turn(key, token, owned, trim_to), frees_only=items is None)

    async def settle(self, operation: str, call: Callable[[], Awaitable[object]], *, frees_only: bool) -> None:
        """Run a store call that must not be lost: past a cancelled request, and again in the
        background when it fails (`retry_later`). A failure is counted and logged by `guarded`, not raised."""
        first = asyncio.ensure_future(self.guarded.call(operation, call))
        self._track(first)  # a request that leaves mid-call leaves it running: shutdown waits for it

        def after(done: asyncio.Future[object]) -> None:  # also when the request was cancelled meanwhile
            if not done.cancelled() and done.exception() is not None:
                self.retry_later(operation, call, frees_only=frees_only)

        first.add_done_callback(after)
        with contextlib.suppress(StoreUnavailable):  # the reply still goes out; `after` tries again
            await asyncio.shield(first)  # a cancelled request still frees what it holds

    def retry_later(self, operation: str, call: Callable[[], Awaitable[object]], *, frees_only: bool) -> None:
        """Try a failed store call again in the background after `CLOSE_RETRIES`, until it succeeds.

        For calls safe to repeat: a turn's close (it stores the turn once, and only under its lock:
        `Backend.close_turn`), freeing a lock or a key, and storing a key's reply (each checks the
        token, and a reply stored twice is the same reply).
        `frees_only`: the call only frees something a lease frees anyway, so it is skipped while the
        breaker is open (and shutdown need not wait for a store the breaker knows is dead; until
        then, `drain_budget` bounds the wait).
        """
        self._background(self._retry(operation, call, frees_only, CLOSE_RETRIES))

    def _background(self, work: Awaitable[None]) -> None:
        """Run `work` past the request, tracked so that `drain` waits for it at shutdown."""
        self._track(asyncio.ensure_future(work))

    def _track(self, work: asyncio.Future[Any]) -> None:
        self._pending.add(work)
        work.add_done_callback(self._pending.discard)

    async def _retry(
        self,
        operation: str,
        call: Callable[[], Awaitable[object]],
        frees_only: bool,
        delays: tuple[float, ...],
        *,
        done_event: str = "session_call_done_late",
    ) -> None:
        for tries, delay in enumerate(delays, start=1):
            await asyncio.sleep(delay)
            if frees_only and self.guarded.breaker.state == "open":
                break
            try:
                async with asyncio.timeout(self.guarded.timeout):
                    await call()
            except Exception:
                continue
            log.info(done_event, operation=operation, after_tries=tries)
            return
        log.warning("session_call_not_done", operation=operation, lease_frees_it=True)

    def drain_budget(self) -> float:
        """The longest a background retry can take: a cut take's own call (its store timeout), then the
        longer schedule, each try bounded by the store timeout."""
        timeout = self.guarded.timeout
        return timeout + max(sum(delays) + timeout * len(delays) for delays in (CLOSE_RETRIES, FREE_RETRIES))

    async def drain(self) -> None:
        """Let pending background retries finish (at shutdown, before the store closes)."""
        deadline = time.monotonic() + self.drain_budget()
        # Again while work remains: a store call that fails as the shutdown waits schedules its retry.
        while self._pending and (left := deadline - time.monotonic()) > 0:
            await asyncio.wait(set(self._pending), timeout=left)
        left_over = list(self._pending)
        for work in left_over:
            work.cancel()
        if left_over:  # let them unwind before the store they use is closed
            await asyncio.wait(left_over, timeout=1.0)

    async def turns(self, user_id: str, session_id: str) -> list[TurnView]:
        """The conversation as turns with timestamps; raises `StoreUnavailable`."""
        if self.backend is None:
            return []
        session = self.backend.session(conversation_key(user_id, session_id))
        items = await self.guarded.call("read", session.get_items)
        return _as_turns(whole_turns(items, self.max_items))  # what the model of the next turn gets

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
    for item in items:
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
