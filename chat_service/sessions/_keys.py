"""Store keys: one per (user, conversation) and per (user, idempotency key), never shared between users."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import uuid
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


def holder_token() -> str:
    """A lock's or a claim's token: host and pid first, so a store on this host can tell when its
    holder was killed and free it at once instead of waiting out the lease."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex}"


def holder_is_gone(token: str) -> bool:
    """True only when `token`'s holder was a process on this host that no longer runs."""
    host, _, rest = token.partition("/")
    pid, _, _ = rest.partition("/")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False
