"""Schemathesis against both services' OpenAPI schemas, served by real processes: no 5xx, ever,
and every answer conforms to the schema."""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from load_tests.processes import ServiceProcess, analytics_env, chat_env

pytestmark = pytest.mark.integration

# FUZZ_EXAMPLES=500 for a deeper search than the suite's default.
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "40")), deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    work = tmp_path_factory.mktemp("fuzz")
    analytics = ServiceProcess(
        "analytics_service.main:app",
        log_path=work / "analytics.log",
        env=analytics_env(f"sqlite:///{work}/analytics.sqlite3", ANALYTICS_SEED_DEMO_DATA="true"),
    )
    chat = ServiceProcess(
        "chat_service.main:app", log_path=work / "chat.log", env=chat_env(analytics.url, work / "outbox.sqlite3")
    )
    with analytics, chat:
        yield {"analytics": analytics, "chat": chat, "work": work}
    logs = (work / "chat.log").read_text() + (work / "analytics.log").read_text()
    assert "Traceback" not in logs, "a fuzzed request made a service fail"


@pytest.fixture(scope="module")
def chat_schema(services):
    return schemathesis.openapi.from_url(services["chat"].url + "/openapi.json")


@pytest.fixture(scope="module")
def analytics_schema(services):
    return schemathesis.openapi.from_url(services["analytics"].url + "/openapi.json")


def fuzz(schema) -> int:
    """Every operation, each with its own Hypothesis run; returns how many operations ran."""
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:

        @FUZZ
        @given(case=operation.as_strategy())
        def check(case) -> None:
            case.call_and_validate(timeout=30)

        check()
    return len(operations)


def test_chat_api(chat_schema):
    assert fuzz(chat_schema) >= 6


def test_analytics_api(analytics_schema):
    assert fuzz(analytics_schema) >= 6
