"""Start-up and shutdown: whatever step fails, everything opened before it is closed."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import threading
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from pydantic import ValidationError

import chat_service.main
from chat_service.delivery import Deliverer
from chat_service.main import create_app
from servicekit.admission import Limiter
from servicekit.connections import server_settings
from tests.chat.conftest import chat_settings


class ClosingTransport(httpx.MockTransport):
    """Answers 404 to everything and remembers whether it was closed."""

    def __init__(self) -> None:
        super().__init__(lambda _: httpx.Response(404))
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True


class Boom(Exception):
    pass


def _fail(*_: object, **__: object) -> None:
    raise Boom


def _outbox_closed(path: Path) -> bool:
    # SQLite removes the WAL file when the last connection to a WAL database closes.
    return path.exists() and not Path(f"{path}-wal").exists()


def _deliverer_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "outbox-deliverer" and not t.done()]


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "outbox-writer"]


@pytest.mark.parametrize("step", ["build_llm", "build_rate_limiter", "open_authenticator", "build_agent"])
async def test_a_failing_startup_step_closes_what_was_opened(tmp_path, monkeypatch, step):
    monkeypatch.setattr(chat_service.main, step, _fail)
    transport = ClosingTransport()
    app = create_app(chat_settings(tmp_path, rate_limit_per_minute=10), transport=transport)
    with pytest.raises(Boom):
        async with LifespanManager(app):
            pass
    assert transport.closed
    assert _outbox_closed(tmp_path / "outbox.sqlite3")
    assert _deliverer_tasks() == []
    assert _writer_threads() == []


async def test_an_outbox_that_cannot_open_still_closes_the_client(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the outbox folder should be")
    transport = ClosingTransport()
    app = create_app(chat_settings(tmp_path, outbox_path=str(blocker / "outbox.sqlite3")), transport=transport)
    with pytest.raises((OSError, sqlite3.Error)):
        async with LifespanManager(app):
            pass
    assert transport.closed
    assert _writer_threads() == []


async def test_a_failing_flush_still_closes_everything(tmp_path, monkeypatch):
    async def failing_flush(self: Deliverer, seconds: float) -> int:
        await self.stop()
        raise Boom

    monkeypatch.setattr(Deliverer, "flush", failing_flush)
    transport = ClosingTransport()
    app = create_app(chat_settings(tmp_path), transport=transport)
    with pytest.raises(Boom):
        async with (
            LifespanManager(app) as manager,
            httpx.AsyncClient(transport=httpx.ASGITransport(manager.app), base_url="http://chat") as client,
        ):
            assert (await client.post("/chat/", json={"user_id": "alice", "text": "hi"})).status_code == 200
    assert transport.closed
    assert _outbox_closed(tmp_path / "outbox.sqlite3")
    assert _deliverer_tasks() == []
    assert _writer_threads() == []


async def test_a_failing_startup_step_after_auth_stops_the_jwks_refresher(tmp_path, monkeypatch):
    monkeypatch.setattr(chat_service.main, "build_agent", _fail)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]  # nothing listens there once the block ends
    app = create_app(chat_settings(tmp_path, auth_jwks_url=f"http://127.0.0.1:{closed_port}/jwks"), transport=ClosingTransport())
    with pytest.raises(Boom):
        async with LifespanManager(app):
            pass
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("jwks-") and not t.done()]


async def test_shutdown_stops_the_admission_timers(tmp_path, monkeypatch):
    made: list[Limiter] = []

    class Recorded(Limiter):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            made.append(self)

    monkeypatch.setattr(chat_service.main, "Limiter", Recorded)
    app = create_app(chat_settings(tmp_path), transport=ClosingTransport())
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(manager.app), base_url="http://chat") as client,
    ):
        assert (await client.post("/chat/", json={"user_id": "alice", "text": "hi"})).status_code == 200
        [limiter] = made
        assert limiter.loop_lag.running  # the first admitted request started it
    assert not limiter.loop_lag.running


async def test_a_bad_connection_guard_setting_fails_startup_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("SERVICEKIT_REQUEST_READ_TIMEOUT", "soon")
    server_settings.cache_clear()
    try:
        app = create_app(chat_settings(tmp_path), transport=ClosingTransport())
        with pytest.raises(ValidationError, match="request_read_timeout"):
            async with LifespanManager(app):
                pass
    finally:
        server_settings.cache_clear()
