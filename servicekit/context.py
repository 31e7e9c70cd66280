"""The current request's id, in its own `ContextVar`.

Outgoing calls and log lines read it from here; nothing reads it back out of the logging context.
"""

from __future__ import annotations

from contextvars import ContextVar

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request being served, or None outside a request."""
    return REQUEST_ID.get()
