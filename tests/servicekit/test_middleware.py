"""The shared middleware: a bug's 500 is JSON, carries the request id, and logs the traceback."""

from __future__ import annotations

import json

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from servicekit.context import current_request_id
from servicekit.errors import install_error_handlers
from servicekit.logging import configure_logging
from servicekit.metrics import HttpMetrics
from servicekit.middleware import RequestContextMiddleware


def _app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(RequestContextMiddleware, metrics=HttpMetrics(CollectorRegistry()), max_body_bytes=1024)
    install_error_handlers(app)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug with a secret-looking message")

    @app.get("/whoami")
    async def whoami() -> dict[str, str | None]:
        return {"request_id": current_request_id()}

    return app


@pytest.fixture(autouse=True)
def json_logs_to_captured_stdout() -> None:
    configure_logging(fmt="json")  # the print logger binds the current (captured) stdout


async def test_a_bug_answers_json_500_with_the_request_id(capsys):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(_app()), base_url="http://app") as client:
        response = await client.get("/boom", headers={"X-Request-ID": "req-500"})
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal server error"}
    assert response.headers["x-request-id"] == "req-500"
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    error = next(line for line in lines if line["event"] == "unhandled_error")
    assert error["request_id"] == "req-500"
    assert "RuntimeError" in error["exception"]
    access = next(line for line in lines if line["event"] == "request")
    assert access["status"] == 500


async def test_the_request_id_lives_in_its_own_context_variable():
    async with httpx.AsyncClient(transport=httpx.ASGITransport(_app()), base_url="http://app") as client:
        given = await client.get("/whoami", headers={"X-Request-ID": "req-7"})
        made = await client.get("/whoami")
    assert given.json() == {"request_id": "req-7"}
    assert made.json() == {"request_id": made.headers["x-request-id"]}
    assert current_request_id() is None  # reset once the request is over
