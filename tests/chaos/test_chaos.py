"""A short chaos run with real processes: kill, freeze, restart; nothing lost, nothing slow."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import Callable, Iterator

import asyncpg
import pytest

from load_tests.chaos import Timings, run_chaos

from ..conftest import POSTGRES_URL, REDIS_URL

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

READ_DEADLINE = 0.5
RESET = 2.0


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), pytest.param("redis", marks=pytest.mark.redis)],
)
def report(request, tmp_path_factory):
    """One run per conversation store: chat's SQLite default, PostgreSQL and Redis (shared by replicas)."""
    timings = Timings(baseline=3, down=3, frozen=3, recovery=4, tail=3)
    with conversation_store(request.param) as sessions_url:
        return run_chaos(tmp_path_factory.mktemp("chaos"), timings, workers=6, breaker_reset=RESET, sessions_url=sessions_url)


@contextlib.contextmanager
def conversation_store(kind: str) -> Iterator[str | None]:
    if kind == "sqlite":
        yield None
    elif kind == "redis":
        yield REDIS_URL  # the run's users carry a random prefix: nothing to clean up between runs
    else:
        schema = asyncio.run(_in_postgres(lambda name: f"CREATE SCHEMA {name}"))
        try:
            yield f"{POSTGRES_URL}?search_path={schema}"
        finally:
            asyncio.run(_in_postgres(lambda name: f"DROP SCHEMA {name} CASCADE", schema))


async def _in_postgres(statement: Callable[[str], str], schema: str | None = None) -> str:
    name = schema or f"chaos_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        await admin.execute(statement(name))
    finally:
        await admin.close()
    return name


def test_every_reply_is_a_200(report):
    assert report["total_requests"] > 500
    assert report["non_2xx"] == 0


def test_no_record_is_lost_or_counted_twice(report):
    assert report["outbox_drained"]
    loss = report["loss_check"]
    assert loss["replies_200"] > 500
    assert (loss["lost"], loss["duplicated"], loss["mismatched"]) == (0, 0, {})


def test_every_conversation_holds_its_turns_whole_and_in_order(report):
    talks = report["conversation_check"]
    assert talks["sessions"] >= 100 and talks["most_turns"] >= 3  # a few sessions per user, several turns each
    assert talks["turns_200"] == report["loss_check"]["replies_200"]
    broken = {k: talks[k] for k in ("half_written", "interleaved", "missing_turns", "extra_turns", "memory_wrong")}
    assert broken == dict.fromkeys(broken, 0), talks["wrong"]


def test_faults_cost_at_most_the_deadline(report):
    phases = report["phases"]
    healthy_p99 = phases["baseline"]["p99_ms"] / 1000
    margin = 1.0  # generous: these machines are noisy
    # Enough requests to judge a p99: 6 workers for a 3 s phase, each request bounded by the 0.5 s
    # deadline, make at least 36 even if every one waits it out (47 on a slow machine, not 50).
    for fault in ("analytics_killed", "analytics_frozen"):
        assert phases[fault]["requests"] >= 30
        assert phases[fault]["p99_ms"] / 1000 <= READ_DEADLINE + healthy_p99 + margin, phases[fault]


def test_the_breaker_opened_and_closed_again(report):
    read_states = [t["state"] for t in report["breaker_transitions"] if t["pipeline"] == "read"]
    assert "open" in read_states
    assert read_states[-1] == "closed"


def test_counts_resume_soon_after_analytics_returns(report):
    for moment, seconds in report["counts_resumed_after_s"].items():
        assert seconds is not None and seconds <= RESET + 2.0, (moment, seconds)


def test_every_reply_belongs_to_a_phase_and_the_phases_tile_the_run(report):
    assert report["unphased_requests"] == 0
    phases = list(report["phases"].values())
    assert sum(phase["requests"] for phase in phases) == report["total_requests"]
    for before, after in itertools.pairwise(phases):
        assert after["start"] - before["end"] < 0.25, (before, after)  # no gap: only the kill's own time, on a busy machine
    assert report["phases"]["analytics_restarting"]["fault"]


def test_fallbacks_happen_in_the_faults_and_the_chat_restart_is_measured(report):
    phases = report["phases"]
    assert phases["analytics_killed"]["read_fallbacks"] > 0 and phases["analytics_frozen"]["read_fallbacks"] > 0
    assert phases["baseline"]["read_fallbacks"] == 0
    restart = report["chat_restart"]
    assert restart["startup_s"] > 0 and restart["shutdown_s"] > 0
    assert restart["unreachable_s"] is not None and restart["unreachable_s"] < restart["shutdown_s"] + restart["startup_s"] + 2
