"""Analytics start-up: a step that fails after the database opened still closes it."""

from __future__ import annotations

from pathlib import Path

import pytest
from asgi_lifespan import LifespanManager

import analytics_service.main
from analytics_service.core.config import Settings
from analytics_service.main import create_app


class Boom(Exception):
    pass


async def test_a_failing_seed_closes_the_database(tmp_path, monkeypatch):
    async def failing_seed(_: object) -> None:
        raise Boom

    monkeypatch.setattr(analytics_service.main, "load_demo_data", failing_seed)
    path = tmp_path / "analytics.sqlite3"
    app = create_app(Settings(database_url=f"sqlite:///{path}", seed_demo_data=True, log_format="json"))
    with pytest.raises(Boom):
        async with LifespanManager(app):
            pass
    # SQLite removes the WAL file when the last connection to a WAL database closes.
    assert path.exists()
    assert not Path(f"{path}-wal").exists()


async def test_an_unreachable_database_fails_startup_cleanly(tmp_path):
    app = create_app(Settings(database_url="postgresql://nobody@127.0.0.1:1/none", log_format="json"))
    with pytest.raises(OSError):
        async with LifespanManager(app):
            pass
