"""The outbox on a real 2 MiB tmpfs: it fills the disk, refuses, drains, and accepts again."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from chat_service.analytics_client import RecordItem
from chat_service.outbox import Outbox, OutboxUnavailable
from chat_service.outbox._store import WAL_SIZE_LIMIT
from tests.fakes.disk import fill, small_disk


@pytest.fixture
def disk(tmp_path) -> Iterator[Path]:
    with small_disk(tmp_path / "disk", "2m") as mounted:
        yield mounted


def record() -> RecordItem:
    return RecordItem("u", uuid.uuid4().hex, "2025-04-06T12:00:00+00:00")


async def append_until_refused(box: Outbox) -> set[str]:
    """Append in concurrent waves until the outbox refuses; the message ids it accepted."""
    accepted: set[str] = set()
    while True:
        wave = [record() for _ in range(200)]
        outcomes = await asyncio.gather(*(box.append(r) for r in wave), return_exceptions=True)
        accepted |= {r.message_id for r, outcome in zip(wave, outcomes, strict=True) if outcome is None}
        refused = [o for o in outcomes if o is not None]
        if refused:
            assert all(isinstance(o, OutboxUnavailable) for o in refused), refused
            return accepted


async def drain(box: Outbox, *, until_accepting: bool) -> set[str]:
    """What a deliverer does when analytics acknowledges everything; the message ids delivered."""
    delivered: set[str] = set()
    while not (until_accepting and box.accepting):
        batch = await box.next_batch(500)
        if not batch:
            break
        await box.acknowledge([row for row, _ in batch])
        delivered |= {item.message_id for _, item in batch}
    return delivered


async def test_a_disk_the_outbox_filled_is_given_back_as_it_drains(disk):
    box = Outbox(disk / "o.sqlite3", max_rows=10**6)
    await box.open()
    assert box.accepting and box.reserve.present()
    accepted = await append_until_refused(box)
    assert box.status == "disk_full" and not box.reserve.present(), "the reserve went to make room for deletes"
    assert os.path.getsize(disk / "o.sqlite3-wal") <= WAL_SIZE_LIMIT + 64 * 1024, "the WAL stays bounded"
    with pytest.raises(OutboxUnavailable):
        await box.append(record())
    delivered = await drain(box, until_accepting=True)
    assert box.accepting and box.reserve.present()
    more = await append_until_refused(box)  # it can fill up and recover again, as often as needed
    delivered |= await drain(box, until_accepting=False)
    assert delivered == accepted | more, "every accepted record was kept, none invented"
    await box.close()


async def test_with_not_one_byte_free_the_reserve_opens_the_file_and_drains_it(disk):
    box = Outbox(disk / "o.sqlite3", max_rows=10**6)
    await box.open()
    for _ in range(100):
        await box.append(record())
    await box.close()  # removes the WAL and its -shm: opening again needs room for them
    filler = fill(disk)
    again = Outbox(disk / "o.sqlite3", max_rows=10**6)
    await again.open()
    assert again.status == "disk_full", "opened with the reserve's room, refusing appends"
    assert len(await drain(again, until_accepting=False)) == 100
    assert again.status == "disk_full", "the disk is still full of someone else's data"
    filler.unlink()
    await again.maintain()
    assert again.accepting
    await again.close()
