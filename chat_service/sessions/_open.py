"""Build the conversations store from settings, inside the lifespan's exit stack."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path

from agents.items import TResponseInputItem

from resilience import Event, Hook
from servicekit.logging import get_logger

from ._backend import Backend
from ._conversations import Conversations
from ._guarded import BreakerOptions, Guarded
from ._sqlite import SqliteBackend

log = get_logger("sessions")
OFF = "off"
LEASE_MARGIN = 10.0  # a lock or an in-flight key outlives the longest run by this much


def default_url(outbox_path: str) -> str:
    """A SQLite file next to the outbox."""
    return f"sqlite:///{Path(outbox_path).parent / 'chat-sessions.sqlite3'}"


def make_backend(url: str, *, ttl: float, timeout: float) -> Backend:
    # Imported only when used: SQLAlchemy alone costs 0.7 s of start-up and its memory in every worker.
    if url.startswith(("redis://", "rediss://", "unix://")):
        from ._redis import RedisBackend

        return RedisBackend(url, ttl=ttl, timeout=timeout)
    if url.startswith("sqlite:///"):
        return SqliteBackend(url, ttl=ttl, timeout=timeout)
    from ._sql import SqlBackend

    return SqlBackend(url, ttl=ttl, timeout=timeout)


async def open_conversations(
    resources: AsyncExitStack,
    *,
    url: str,
    max_items: int,
    ttl: float,
    call_timeout: float,
    lock_wait: float,
    run_deadline: float,
    idempotency_ttl: float,
    on_failure: Callable[[str, str], None],
    hooks: Sequence[Hook] = (),
    breaker: BreakerOptions | None = None,
) -> Conversations:
    """Open the store; a store that cannot be reached now starts degraded (no history), never fails start-up."""
    backend: Backend | None = None
    if url != OFF:
        backend = make_backend(url, ttl=ttl, timeout=call_timeout)
        resources.push_async_callback(backend.close)
        try:
            await backend.start()
        except Exception as error:
            # Like analytics: chat answers without history until the store is back. SQL tables
            # are created on the next start; Redis needs nothing created.
            log.error("session_store_unavailable_at_start", error=type(error).__name__, detail=str(error)[:200])
            on_failure("start", type(error).__name__)

    def emit(event: Event) -> None:
        for hook in hooks:
            hook(event)

    guarded = Guarded(timeout=call_timeout, on_failure=on_failure, emit=emit, breaker=breaker)
    conversations = Conversations(
        backend,
        guarded,
        max_items=max_items,
        lock_wait=lock_wait,
        # A key is claimed before the wait for the conversation's lock: its lease covers both.
        lease=lock_wait + run_deadline + LEASE_MARGIN,
        idempotency_ttl=idempotency_ttl,
    )
    resources.push_async_callback(conversations.drain)  # runs before the store closes (pushed after it)
    return conversations


def user_item(text: str) -> TResponseInputItem:
    """The user's message as the model's input item."""
    return {"role": "user", "content": text}
