"""A durable outbox: records wait on local disk until analytics acknowledges them.

Appends happen in the request path, before the reply is sent, so a 200 always means the record
is committed to disk. Every SQLite call runs on the outbox's own writer thread; appends that
arrive together share one commit. Several worker processes may share the file: each delivers
the records of the owner slots it holds (an `flock` per slot), and adopts a dead process's slot.
On a full disk the outbox refuses appends, keeps delivering, and gives the space back.

`python -m chat_service.outbox --help`: list and requeue dead letters.
"""

from ._outbox import DEFAULT_RESERVE_BYTES, Outbox, OutboxFull, OutboxRefused, OutboxUnavailable, Stats, Status

__all__ = ["DEFAULT_RESERVE_BYTES", "Outbox", "OutboxFull", "OutboxRefused", "OutboxUnavailable", "Stats", "Status"]
