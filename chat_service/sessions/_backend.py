"""What a session store does besides the SDK's `Session`: bound history, lease locks, idempotency records."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol

from agents.memory.session import Session


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """A key's record: who holds it (`token`), the body it was used with, and the reply once there is one."""

    token: str
    fingerprint: str
    reply: str | None = None

    def dumps(self) -> str:
        return json.dumps({"token": self.token, "fingerprint": self.fingerprint, "reply": self.reply})

    @classmethod
    def loads(cls, raw: str | bytes) -> IdempotencyRecord:
        data = json.loads(raw)
        return cls(str(data["token"]), str(data["fingerprint"]), data.get("reply"))


class Backend(Protocol):
    """One store: SQL (SQLite, PostgreSQL) or Redis. Every call may raise; the caller bounds and counts that."""

    name: str

    async def start(self) -> None:
        """Create what is missing (tables) and start background work (the TTL sweep)."""

    async def close(self) -> None: ...

    def session(self, key: str) -> Session:
        """The Agents SDK session of one conversation."""

    async def trim(self, key: str, keep: int) -> None:
        """Drop all but the `keep` most recent items."""

    async def try_lock(self, key: str, token: str, lease: float) -> bool:
        """Take the conversation's lease lock if free or expired."""

    async def unlock(self, key: str, token: str) -> None:
        """Release the lock if `token` still holds it."""

    async def claim(self, key: str, record: IdempotencyRecord, lease: float) -> IdempotencyRecord | None:
        """Store `record` unless a live one exists: None when stored, else the live record."""

    async def finish(self, key: str, token: str, reply: str, ttl: float) -> None:
        """Attach the reply to the record `token` holds and keep it for `ttl` seconds."""

    async def release(self, key: str, token: str) -> None:
        """Forget the record `token` holds (its run failed)."""
