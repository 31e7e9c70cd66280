"""What a session store does besides the SDK's `Session`: bound history, lease locks, idempotency records."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

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
    # Whether a call gives the event loop away mid-call (it awaits the network or a thread). A call
    # that never does (SQLite's, on the loop) runs whole between two of the request's awaits, so a
    # cancelled request can never cut it: `Conversations.take` then skips the task that keeps a
    # take or claim going past the request.
    calls_suspend: bool

    async def start(self) -> None:
        """Create what is missing (tables) and start background work (the TTL sweep)."""

    async def close(self) -> None: ...

    def session(self, key: str) -> Session:
        """The Agents SDK session of one conversation; it reads every item (trimming bounds them)."""

    async def trim(self, key: str, keep: int) -> None:
        """Keep the most recent whole turns that fit `keep` items, at least the latest one (`_turns.keep_from`).

        On its own, under no lock (tests check each store's cut with it): a turn's close trims
        itself, under the conversation's lock, with the same rule.
        """

    async def open_turn(self, key: str, token: str, lease: float) -> list[Any] | None:
        """Take the conversation's lease lock and read its history; None while another run holds it.

        Taking it again with the token that holds it succeeds (and renews the lease): the retry of a
        take whose reply was lost must not find the conversation locked by itself.
        """

    async def close_turn(self, key: str, token: str, items: list[Any] | None, trim_to: int | None) -> None:
        """Store the turn's `items` (if any), `trim` to `trim_to` items (if given), release the lock.

        Nothing is written unless `token` still holds the lock. Called again with the same
        arguments when it failed (`Conversations.retry_later`), possibly after the store applied it
        and only the reply was lost: it must not store the turn twice. SQLite and PostgreSQL close
        in one transaction that deletes the lock first (a retry finds it gone); Redis marks the lock
        stored in the step that stores the turn (a retry finds the mark), and trims and unlocks
        only while the lock is still the run's.
        """

    async def claim(self, key: str, record: IdempotencyRecord, lease: float) -> IdempotencyRecord | None:
        """Store `record` unless a live one exists: None when stored (or already held by `record.token`), else the live record.

        A claim (like a take) whose reply was lost or whose request was cancelled is undone by
        `release` with its token (`Conversations.take`).
        """

    async def finish(self, key: str, token: str, reply: str, ttl: float) -> None:
        """Attach the reply to the record `token` holds and keep it for `ttl` seconds.

        Called again with the same arguments when it failed (`Claim.finish` through
        `Conversations.settle`): it writes only a record `token` still holds, the same reply each time.
        """

    async def release(self, key: str, token: str) -> None:
        """Forget the record `token` holds (its run failed)."""
