"""How replies and instructions state a count: "1 message", "5 messages"."""

from __future__ import annotations


def messages_phrase(count: int) -> str:
    return f"{count} message" if count == 1 else f"{count} messages"
