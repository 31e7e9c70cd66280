"""Store keys: one per (user, conversation) and per (user, idempotency key), never shared between users."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def conversation_key(user_id: str, session_id: str) -> str:
    # The length prefix keeps ("a:b", "c") and ("a", "b:c") apart whatever characters ids may hold.
    return f"{len(user_id)}:{user_id}:{session_id}"


def idempotency_key(user_id: str, key: str) -> str:
    return f"{len(user_id)}:{user_id}:{key}"


def fingerprint(body: dict[str, Any]) -> str:
    """The hash of a request body as the client sent it: key order and whitespace do not matter."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def record_id(user_id: str, key: str) -> str:
    """The analytics record id of a keyed chat: the same on every replica, so a retry is counted once."""
    return "idem-" + hashlib.sha256(idempotency_key(user_id, key).encode()).hexdigest()[:40]
