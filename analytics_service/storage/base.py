"""What the routes need of a database."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol


class StoreRecord(NamedTuple):
    user_id: str
    message_id: str
    timestamp: str


class RecordResult(NamedTuple):
    message_count: int
    duplicate: bool


class Store(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None: ...

    def is_unavailable(self, error: BaseException) -> bool:
        """True when `error` means the database cannot serve now (an outage), not a bug."""
        ...

    async def count(self, user_id: str) -> int | None:
        """The user's message count, or None for a user with no messages."""
        ...

    async def record(self, records: Sequence[StoreRecord]) -> list[RecordResult]:
        """Record each message once; results come back in the same order."""
        ...
