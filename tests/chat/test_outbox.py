"""The outbox on a real SQLite file: bounded, durable, shared safely by processes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from chat_service.analytics_client import RecordItem
from chat_service.outbox import Outbox, OutboxFull


def item(n: int) -> RecordItem:
    return RecordItem("u", f"m{n}", "2025-04-06T12:00:00+00:00")


@pytest.fixture
def outbox(tmp_path):
    box = Outbox(str(tmp_path / "o.sqlite3"), max_rows=3)
    box.open()
    yield box
    box.close()


def test_records_are_kept_across_reopening(tmp_path, outbox):
    outbox.append(item(1))
    outbox.close()
    again = Outbox(str(tmp_path / "o.sqlite3"), max_rows=3)
    again.open()
    assert [i.message_id for _, i in again.claim(10)] == ["m1"]
    again.close()


def test_a_full_outbox_refuses(outbox):
    for n in range(3):
        outbox.append(item(n))
    with pytest.raises(OutboxFull):
        outbox.append(item(9))
    outbox.acknowledge([row for row, _ in outbox.claim(1)])
    outbox.append(item(9))
    assert outbox.exact_depth() == 3


def test_claims_hide_records_until_released(outbox):
    outbox.append(item(1))
    outbox.append(item(2))
    claimed = outbox.claim(1)
    assert [i.message_id for _, i in claimed] == ["m1"]
    assert [i.message_id for _, i in outbox.claim(10)] == ["m2"]
    assert outbox.claim(10) == []
    outbox.release([row for row, _ in claimed])
    assert [i.message_id for _, i in outbox.claim(10)] == ["m1"]


def test_claims_of_a_dead_process_are_freed_on_open(tmp_path):
    path = str(tmp_path / "o.sqlite3")
    box = Outbox(path, max_rows=10)
    box.open()
    box.append(item(1))
    box.append(item(2))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    box.db.execute("UPDATE outbox SET claimed_until = 1e12, claimed_by = ? WHERE message_id = 'm1'", (pid,))
    box.db.execute("UPDATE outbox SET claimed_until = 1e12, claimed_by = ? WHERE message_id = 'm2'", (os.getppid(),))
    box.close()
    box.open()
    assert [i.message_id for _, i in box.claim(10)] == ["m1"], "a live process keeps its claim"
    box.close()
