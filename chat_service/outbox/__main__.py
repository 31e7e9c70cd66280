"""Dead letters: records analytics refused as invalid (400, 413, 422), set aside for a human.

    python -m chat_service.outbox list [--limit N] [--json]
    python -m chat_service.outbox requeue ID [ID ...]    # or --all
    python -m chat_service.outbox status

The file is CHAT_OUTBOX_PATH (or --path). It is safe while chat runs: a requeued record becomes
a new outbox record owned by a free slot, which a running chat adopts within a second (or the
next chat to start delivers it). Requeue after fixing what analytics refused, or it comes back.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sqlite3
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from ..core.config import Settings
from . import _store as store
from ._owners import OwnerSlots


def _write(line: str) -> None:
    sys.stdout.write(line + "\n")


def _list(db: sqlite3.Connection, limit: int, as_json: bool) -> None:
    letters = store.dead_letters(db, limit)
    if as_json:
        _write(json.dumps([dataclasses.asdict(letter) for letter in letters]))
        return
    _write(f"{'id':>8}  {'status':>6}  {'failed at (UTC)':<19}  {'user_id':<20}  message_id / timestamp")
    for letter in letters:
        failed = datetime.fromtimestamp(letter.failed_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        status = "-" if letter.status is None else str(letter.status)
        _write(f"{letter.id:>8}  {status:>6}  {failed:<19}  {letter.user_id:<20}  {letter.message_id} / {letter.timestamp}")
    _write(f"{len(letters)} of {store.dead_letter_count(db)} dead letters")


def _requeue(db: sqlite3.Connection, slots: OwnerSlots, ids: Sequence[int] | None) -> None:
    owner = slots.take()  # a slot of our own for the moment; a chat adopts it once we let go
    moved = store.requeue(db, owner, ids)
    _write(f"requeued {moved} record(s)")


def _status(db: sqlite3.Connection) -> None:
    _write(json.dumps({"depth": store.count(db), "dead_letters": store.dead_letter_count(db), "owners": store.owners(db)}))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m chat_service.outbox", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--path", type=Path, help="the outbox file (default: CHAT_OUTBOX_PATH)")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="show dead letters, oldest first")
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--json", action="store_true", help="one JSON array")
    requeue = commands.add_parser("requeue", help="send dead letters again")
    requeue.add_argument("ids", nargs="*", type=int, help="dead letter ids (see list)")
    requeue.add_argument("--all", action="store_true", help="every dead letter")
    commands.add_parser("status", help="records waiting, dead letters, owner slots with records")
    args = parser.parse_args(argv)

    path: Path = args.path or Path(Settings().outbox_path)
    try:
        db = store.connect(path, busy_timeout=5.0, create=False)
    except sqlite3.Error as error:
        sys.stderr.write(f"cannot open the outbox at {path}: {error}\n")
        return 2
    slots = OwnerSlots(path.with_name(f"{path.name}-owners"))
    try:
        if args.command == "list":
            _list(db, args.limit, args.json)
        elif args.command == "requeue":
            if args.all == bool(args.ids):
                parser.error("requeue takes dead letter ids, or --all")
            _requeue(db, slots, None if args.all else args.ids)
        else:
            _status(db)
    finally:
        slots.close()
        db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
