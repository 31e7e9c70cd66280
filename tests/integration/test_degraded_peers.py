"""Real processes behind a fault proxy: a flaky analytics, and an analytics whose database dies."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from load_tests.bench_breaker import BREAKER_MODES, run_scenario
from load_tests.faultproxy import ProxyProcess
from load_tests.processes import ServiceProcess, analytics_env, chat_env
from tests.conftest import postgres_schema

pytestmark = pytest.mark.integration


def test_a_30_percent_flaky_analytics_leaves_the_rate_breaker_closed_and_opens_the_consecutive_one(tmp_path):
    # 30% of analytics' answers are cut by a TCP reset; chat is driven at a steady 100 chats/s.
    # Two failures in a row (not the default five) make the consecutive breaker's trouble certain
    # within a 3 s run: with three it opened in most runs but not in one CI run on a slow machine.
    # `python -m load_tests.bench_breaker` measures the defaults.
    results = {}
    for scenario in BREAKER_MODES:
        if scenario.name == "consecutive":
            scenario = type(scenario)(scenario.name, {**scenario.chat_env, "CHAT_ANALYTICS_READ__BREAKER_FAILURES": "2"})
        results[scenario.name] = run_scenario(
            tmp_path / scenario.name.split()[0], scenario, fault=("cut", 0.3), rate=100, seconds=3
        )
    rate, consecutive = results["rate (default)"], results["consecutive"]
    assert rate["non_2xx"] == consecutive["non_2xx"] == 0, results
    assert rate["chats"] > 200 and consecutive["chats"] > 200, results
    assert rate["breaker_openings"] == 0, results
    assert rate["fallback_pct"] < 20, results  # what retries within the budget leave
    assert consecutive["breaker_openings"] >= 1, results
    # Several times the rate breaker's share (17-41% against ~9% at the default five in a row when the
    # issue was filed; at three in a row here, 68-85% against 3.7-8%, and 13.3% against 4.0% in one
    # CI run on a slow machine).
    assert consecutive["fallback_pct"] >= max(2 * rate["fallback_pct"], rate["fallback_pct"] + 5), results


@contextlib.asynccontextmanager
async def analytics_on_postgres_behind_a_proxy(tmp_path) -> AsyncIterator[tuple[ServiceProcess, ServiceProcess, ProxyProcess]]:
    async with postgres_schema() as url:
        with ProxyProcess(("127.0.0.1", 5432)) as proxy:
            analytics = ServiceProcess(
                "analytics_service.main:app",
                log_path=tmp_path / "analytics.log",
                env=analytics_env(
                    url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}"),
                    ANALYTICS_DATABASE_RETRY_AFTER="1",
                    ANALYTICS_DATABASE_STATEMENT_TIMEOUT="1",
                ),
            )
            chat = ServiceProcess(
                "chat_service.main:app",
                log_path=tmp_path / "chat.log",
                env=chat_env(analytics.url, tmp_path / "outbox.sqlite3", CHAT_ANALYTICS_READ__BREAKER_RESET="1"),
            )
            with analytics, chat:
                yield analytics, chat, proxy


def _chats(chat: ServiceProcess, count: int, user: str = "pat") -> list[httpx.Response]:
    def one(_: int) -> httpx.Response:
        return httpx.post(chat.url + "/chat/", json={"user_id": user, "text": "hi"}, timeout=10)

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, range(count)))


@pytest.mark.postgres
async def test_a_database_outage_is_a_503_chat_opens_its_breaker_keeps_answering_and_everything_recovers(tmp_path):
    # Async only to hold the PostgreSQL schema; the processes are driven with blocking calls.
    async with analytics_on_postgres_behind_a_proxy(tmp_path) as (analytics, chat, proxy):
        assert all(r.status_code == 200 for r in _chats(chat, 3))
        proxy.set("blackhole")

        # Analytics: a 503 with Retry-After, fast once the outage is known.
        timings = []
        for _ in range(15):
            started = time.monotonic()
            response = httpx.get(analytics.url + "/analytics/pat", timeout=10)
            timings.append(time.monotonic() - started)
            assert response.status_code == 503 and response.json() == {"detail": "Database unavailable"}
            assert int(response.headers["retry-after"]) >= 1
        assert max(timings) < 1.0 + 2.0, timings  # the statement timeout, with a generous margin
        assert sorted(timings)[len(timings) // 2] < 0.1, timings

        # Chat: every chat answered, with the fallback, and its read breaker opens.
        replies = _chats(chat, 40)
        assert {r.status_code for r in replies} == {200}
        assert all("sent 0 messages" in r.json()["reply"] for r in replies)
        assert httpx.get(chat.url + "/health/dependencies").json()["analytics"]["read"]["breaker"] == "open"
        chat_metrics = httpx.get(chat.url + "/metrics").text
        assert 'chat_breaker_transitions_total{state="open",target="analytics-read"}' in chat_metrics

        # Recovery: the database is back, analytics serves, chat's breaker closes, counts return.
        proxy.set("pass")
        deadline = time.monotonic() + 20
        while True:
            reply = httpx.post(chat.url + "/chat/", json={"user_id": "pat", "text": "hi"}, timeout=10)
            assert reply.status_code == 200
            if "sent 0 messages" not in reply.json()["reply"]:
                break
            assert time.monotonic() < deadline, "chat never saw analytics again"
            await asyncio.sleep(0.1)
        assert httpx.get(chat.url + "/health/dependencies").json()["analytics"]["read"]["breaker"] == "closed"
        analytics_metrics = httpx.get(analytics.url + "/metrics").text
        assert "analytics_database_up 1.0" in analytics_metrics
        assert "analytics_database_outages_total 1.0" in analytics_metrics
    log = (tmp_path / "analytics.log").read_text()
    assert log.count('"event": "database_unavailable"') == 1
    assert log.count('"event": "database_recovered"') == 1
    assert "Traceback" not in log and '"status": 500' not in log
    assert len(log) < 200_000, "one access line per request at most, no traceback per request"
