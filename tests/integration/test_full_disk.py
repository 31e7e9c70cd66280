"""Chat's outbox on a real 2 MiB tmpfs, analytics behind a fault proxy, open-loop load: a full disk
costs 503s and readiness, never a record, a crash or a stuck chat.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from chat_service.analytics_client import RecordItem
from chat_service.outbox import Outbox
from chat_service.outbox import _store as store
from load_tests.faultproxy import ProxyProcess
from load_tests.openloop import OpenLoop, Sent, ok_by_user
from load_tests.processes import ServiceProcess, analytics_env, chat_env
from tests.fakes.disk import free_bytes, small_disk

pytestmark = pytest.mark.integration

# Left free after the preload: room for the WAL to reach its 400 KiB autocheckpoint size, the
# 32 KiB -shm file, and a few hundred more records: the disk fills up seconds into the load.
LEAVE_FREE = 450 * 1024
RATE = 100.0
RECOVERY_GOAL = 2.0
MARGIN = 3.0  # noisy shared machines: the goal is reported, the assertion is generous


@pytest.fixture(scope="module")
def analytics(tmp_path_factory) -> Iterator[tuple[ServiceProcess, ProxyProcess]]:
    work = tmp_path_factory.mktemp("analytics")
    process = ServiceProcess(
        "analytics_service.main:app", log_path=work / "analytics.log", env=analytics_env(f"sqlite:///{work}/analytics.sqlite3")
    )
    with process, ProxyProcess(("127.0.0.1", process.port)) as proxy:
        yield process, proxy


@pytest.fixture
def disk(tmp_path) -> Iterator[Path]:
    with small_disk(tmp_path / "disk", "2m") as mounted:
        yield mounted


def preload(path: Path, *, leave: int, prefix: str) -> dict[str, int]:
    """Records a previous chat left behind, until `leave` bytes are free (the reserve made first)."""
    Outbox(path, max_rows=1).reserve.make()
    db = store.connect(path, busy_timeout=1.0)
    counts: dict[str, int] = {}
    while free_bytes(path.parent) > leave:
        items = [RecordItem(f"{prefix}-preload-{n % 10}", uuid.uuid4().hex, "2025-04-06T12:00:00+00:00") for n in range(200)]
        store.insert(db, 0, items, 10**6)
        store.checkpoint(db, busy_timeout=1.0)  # no WAL left over: what is free is free
        for record in items:
            counts[record.user_id] = counts.get(record.user_id, 0) + 1
    db.close()
    return counts


def start_chat(tmp_path: Path, disk: Path, analytics_url: str) -> ServiceProcess:
    env = chat_env(analytics_url, disk / "outbox.sqlite3", CHAT_SHUTDOWN_FLUSH_SECONDS="1")
    return ServiceProcess("chat_service.main:app", log_path=tmp_path / "chat.log", env=env).start()


async def wait_for(chat: httpx.AsyncClient, path: str, status: int, timeout: float) -> float:
    """Poll until `path` answers `status`; returns when (time.monotonic())."""
    async with asyncio.timeout(timeout):
        while (await chat.get(path)).status_code != status:
            await asyncio.sleep(0.02)
    return time.monotonic()


async def wait_drained(chat: httpx.AsyncClient, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while (await chat.get("/health/dependencies")).json()["outbox"]["depth"] != 0:
            await asyncio.sleep(0.1)


def assert_nothing_lost(analytics: ServiceProcess, expected: dict[str, int]) -> None:
    for user, count in expected.items():
        response = httpx.get(f"{analytics.url}/analytics/{user}", timeout=5)
        assert response.json()["message_count"] == count, user


def merged(*counts: dict[str, int]) -> dict[str, int]:
    total: dict[str, int] = {}
    for part in counts:
        for user, n in part.items():
            total[user] = total.get(user, 0) + n
    return total


async def fill_until_refused(chat: httpx.AsyncClient) -> float:
    """Under open-loop load, wait until the disk is full; check readiness and 503s meanwhile."""
    refused_at = await wait_for(chat, "/readyz", 503, timeout=30)
    assert (await chat.get("/readyz")).json() == {"status": "unavailable", "outbox": "disk_full"}
    probe = await chat.post("/chat/", json={"user_id": "probe", "text": "hi"})
    assert probe.status_code == 503 and probe.headers["Retry-After"] == "1"
    for _ in range(20):  # analytics still down: it stays refused, no flapping
        await asyncio.sleep(0.05)
        assert (await chat.get("/readyz")).status_code == 503
    return refused_at


def answered_between(replies: list[Sent], start: float, end: float) -> set[int]:
    return {r.status for r in replies if start <= r.done < end}


async def test_a_full_outbox_accepts_again_within_seconds_of_analytics_returning(tmp_path, disk, analytics):
    process, proxy = analytics
    prefix = uuid.uuid4().hex[:8]
    proxy.set("refuse")
    preloaded = preload(disk / "outbox.sqlite3", leave=LEAVE_FREE, prefix=prefix)
    chat = start_chat(tmp_path, disk, proxy.url)
    try:
        async with httpx.AsyncClient(base_url=chat.url, timeout=10) as client:
            load = OpenLoop(chat.url, rate=RATE, prefix=prefix)
            running = asyncio.create_task(load.run(seconds=60))
            refused_at = await fill_until_refused(client)
            proxy.set("pass")
            back = time.monotonic()
            ready_at = await wait_for(client, "/readyz", 200, timeout=RECOVERY_GOAL + MARGIN)
            await asyncio.sleep(2.0)
            load.stop()
            replies = await running
            drain_started = time.monotonic()
            await wait_drained(client)
            drained_after = time.monotonic() - drain_started
        recovered_after = min(r.done for r in replies if r.status == 200 and r.done >= back) - back
        after = [r for r in replies if r.done >= back + recovered_after]
        print(
            f"\nfull disk: {sum(preloaded.values())} records preloaded, {len(replies)} chats at {RATE:g}/s:"
            f" {sum(r.status == 200 for r in replies if r.done < refused_at)} x 200 until full,"
            f" {sum(r.status == 503 for r in replies)} x 503; analytics back: /readyz 200 after {ready_at - back:.2f} s,"
            f" first 200 after {recovered_after:.2f} s, then {sum(r.status == 200 for r in after)} x 200"
            f" and {sum(r.status != 200 for r in after)} other; the rest drained {drained_after:.2f} s after the load"
        )
        assert answered_between(replies, refused_at, back) == {503}, "full and analytics down: 503s only"
        assert all(r.retry_after == "1" for r in replies if r.status == 503)
        assert recovered_after <= RECOVERY_GOAL + MARGIN
        assert {r.status for r in replies} <= {200, 503}, "no 500, no dropped connection"
        assert_nothing_lost(process, merged(preloaded, ok_by_user(replies)))
    finally:
        chat.stop()
    assert "Traceback" not in (tmp_path / "chat.log").read_text()


async def test_sigterm_on_a_full_disk_exits_cleanly_and_the_next_start_drains_it(tmp_path, disk, analytics):
    process, proxy = analytics
    prefix = uuid.uuid4().hex[:8]
    proxy.set("refuse")
    preloaded = preload(disk / "outbox.sqlite3", leave=LEAVE_FREE, prefix=prefix)
    chat = start_chat(tmp_path, disk, proxy.url)
    async with httpx.AsyncClient(base_url=chat.url, timeout=10) as client:
        load = OpenLoop(chat.url, rate=RATE, prefix=prefix)
        running = asyncio.create_task(load.run(seconds=60))
        await fill_until_refused(client)
        load.stop()
        first_run = await running
    assert chat.stop() in (0, -15), "uvicorn re-raises the SIGTERM it handled: -15 is a clean exit"
    log = (tmp_path / "chat.log").read_text()
    assert "Application shutdown failed" not in log and '"event": "chat_stopped"' in log

    chat.start()  # on the disk as the last run left it: full, no reserve
    try:
        async with httpx.AsyncClient(base_url=chat.url, timeout=10) as client:
            assert (await client.get("/readyz")).status_code == 503
            refused = await client.post("/chat/", json={"user_id": "probe", "text": "hi"})
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
            proxy.set("pass")
            await wait_for(client, "/readyz", 200, timeout=RECOVERY_GOAL + MARGIN)
            second_run = [await client.post("/chat/", json={"user_id": f"{prefix}-after", "text": "hi"}) for _ in range(5)]
            assert [r.status_code for r in second_run] == [200] * 5
            await wait_drained(client)
        assert_nothing_lost(process, merged(preloaded, ok_by_user(first_run), {f"{prefix}-after": 5}))
    finally:
        chat.stop()
    assert "Traceback" not in (tmp_path / "chat.log").read_text()
