"""`python -m chat_service.outbox`: list and requeue dead letters in a real outbox file."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from chat_service.analytics_client import RecordItem
from chat_service.outbox import Outbox
from chat_service.outbox.__main__ import main


def record(message_id: str) -> RecordItem:
    return RecordItem("alice", message_id, "2025-04-06T12:00:00+00:00")


@pytest.fixture
async def outbox(tmp_path):
    """A running chat's outbox, holding slot 0, with two dead letters and one record waiting."""
    box = Outbox(tmp_path / "o.sqlite3", max_rows=100)
    await box.open()
    for message_id in ("bad1", "bad2", "good"):
        await box.append(record(message_id))
    for row_id, item in await box.next_batch(10):
        if item.message_id.startswith("bad"):
            await box.dead_letter(row_id, 422)
    yield box
    await box.close()


def run(capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()  # not the outbox's own log lines
    code = main(args)
    return code, capsys.readouterr().out


async def test_list_shows_each_dead_letter_with_why_it_was_refused(outbox, capsys):
    code, out = run(capsys, "--path", str(outbox.path), "list")
    assert code == 0 and "bad1" in out and "bad2" in out and "good" not in out
    assert " 422 " in out and "2 of 2 dead letters" in out
    letters = json.loads(run(capsys, "--path", str(outbox.path), "list", "--json")[1])
    assert [(d["message_id"], d["status"], d["user_id"]) for d in letters] == [("bad1", 422, "alice"), ("bad2", 422, "alice")]


async def test_requeue_sends_a_dead_letter_again_through_the_running_chat(outbox, capsys):
    [first, _] = json.loads(run(capsys, "--path", str(outbox.path), "list", "--json")[1])
    assert run(capsys, "--path", str(outbox.path), "requeue", str(first["id"])) == (0, "requeued 1 record(s)\n")
    await outbox.maintain()  # the chat's deliverer does this every second: it adopts the command's slot
    assert [item.message_id for _, item in await outbox.next_batch(10)] == ["good", "bad1"]
    assert [d["message_id"] for d in json.loads(run(capsys, "--path", str(outbox.path), "list", "--json")[1])] == ["bad2"]
    assert run(capsys, "--path", str(outbox.path), "requeue", "--all") == (0, "requeued 1 record(s)\n")
    await outbox.maintain()
    assert [item.message_id for _, item in await outbox.next_batch(10)] == ["good", "bad1", "bad2"]
    assert (await outbox.stats()).dead_letters == 0


async def test_requeue_needs_ids_or_all_and_a_missing_file_is_an_error(outbox, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--path", str(outbox.path), "requeue"])
    assert exit_info.value.code == 2
    assert main(["--path", str(tmp_path / "nowhere.sqlite3"), "list"]) == 2
    assert "cannot open the outbox" in capsys.readouterr().err
    assert not (tmp_path / "nowhere.sqlite3").exists(), "a typo must not create an empty outbox"


async def test_the_command_runs_as_a_module_on_the_configured_path(outbox):
    env = {**os.environ, "CHAT_OUTBOX_PATH": str(outbox.path)}
    command = [sys.executable, "-m", "chat_service.outbox", "status"]
    result = await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"depth": 1, "dead_letters": 2, "owners": [0]}
