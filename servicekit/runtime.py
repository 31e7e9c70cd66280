"""Process-level tuning done once at start-up."""

from __future__ import annotations

import gc
import os

# Containers allocated (net) before a young-generation collection; CPython's default is 700.
# Every request leaves cyclic garbage (cancelled tasks and their tracebacks, uvicorn's cycle
# objects, FastAPI's exit stacks, httpx's responses: ~80 objects a chat, counted with
# gc.DEBUG_SAVEALL). With 700, under load most of it survived two young collections and was
# freed by full collections of everything alive: 2.7-3.6 s of GC in a 13 s run of 200
# concurrent chats; with 20,000 most of it dies young: 1.9-2.0 s, ~0.1-0.3 ms of CPU a chat less,
# and the longest pause went from ~70 ms (a full collection) to ~13 ms. Memory: a few MB more
# garbage awaiting collection. docs/operations.md has the measurement.
GC_YOUNG_THRESHOLD = 20_000


def freeze_startup_objects() -> None:
    """Move everything allocated so far out of the cyclic GC's reach, and collect young garbage less often.

    The Agents SDK, pydantic and FastAPI leave ~200,000 long-lived objects after import; every
    full collection walked them all, about 150 ms on this machine, which showed up as a latency
    spike every couple of seconds under load. Frozen objects are never scanned again.
    `SERVICEKIT_GC_YOUNG_THRESHOLD` overrides the young generation's threshold (0 turns the
    cyclic GC off, as some services do; then only reference counting frees memory).
    """
    gc.collect()
    gc.freeze()
    given = os.environ.get("SERVICEKIT_GC_YOUNG_THRESHOLD")
    young = GC_YOUNG_THRESHOLD if given is None else _threshold(given)
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young, middle, old)


def _threshold(given: str) -> int:
    try:
        value = int(given)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"SERVICEKIT_GC_YOUNG_THRESHOLD must be a whole number >= 0, not {given!r}")
    return value
