"""Turn boundaries: every store trims a conversation between turns, never inside one.

A turn is the user's message followed by the run's items (tool calls, their outputs, the reply).
An item with role "user" starts a turn: chat stores the user's message first, and a run's own
items never carry that role. Cutting anywhere else would leave a tool output whose call is gone
(OpenAI answers 400 to that) or a history with no user message at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

# The same test in SQL, for SQLite's trim: it reads the flag of each row without decoding it in Python.
SQLITE_STARTS_TURN = "json_extract(data, '$.role') IS 'user'"


def dump_item(item: Any) -> str:
    """A stored item's JSON, as the SDK's sessions write it (compact, ASCII): a store that writes
    items itself, in its own transaction or script, writes what the SDK reads back."""
    return json.dumps(item, separators=(",", ":"))


def load_items(raws: Iterable[str | bytes]) -> list[Any]:
    """Stored items decoded as the SDK's sessions read them back: one that does not decode is skipped."""
    items = []
    for raw in raws:
        try:
            items.append(json.loads(raw))
        except ValueError:  # JSONDecodeError, UnicodeDecodeError
            continue
    return items


def starts_turn(item: Any) -> bool:
    return isinstance(item, dict) and item.get("role") == "user"


def starts_turn_json(raw: str | bytes) -> bool:
    """`starts_turn` of a stored item; an item that does not decode starts nothing (the SDK skips it too)."""
    try:
        return starts_turn(json.loads(raw))
    except (ValueError, UnicodeDecodeError):
        return False


def keep_from(starts: Sequence[bool], max_items: int) -> int:
    """The index of the first item to keep, given which items start a turn.

    The most recent whole turns whose items add up to at most `max_items`, and at least the
    latest whole turn even when it alone is longer. `len(starts)` (keep nothing) when no item
    starts a turn: such items cannot be given to a model.
    """
    turn_starts = [index for index, start in enumerate(starts) if start]
    if not turn_starts:
        return len(starts)
    earliest = len(starts) - max_items
    return next((index for index in turn_starts if index >= earliest), turn_starts[-1])


def whole_turns(items: list[T], max_items: int) -> list[T]:
    """The part of a history that `keep_from` keeps: what the model gets and `GET /sessions` shows."""
    return items[keep_from([starts_turn(item) for item in items], max_items) :]
