"""The analytics API as the tutorial defines it, plus recording."""

from __future__ import annotations

import asyncio

import pytest

from analytics_service.core.config import Settings
from analytics_service.main import create_app
from tests.conftest import asgi_client

TS = "2025-04-06T12:00:00Z"


async def test_root_is_the_tutorials_welcome(analytics):
    response = await analytics.get("/")
    assert response.json() == {"message": "Welcome to the DACA Analytics Service! Access /docs for the API documentation."}


async def test_demo_users_and_unknown_users(analytics):
    assert (await analytics.get("/analytics/alice")).json() == {"message_count": 5}
    assert (await analytics.get("/analytics/bob")).json() == {"message_count": 3}
    missing = await analytics.get("/analytics/charlie")
    assert missing.status_code == 404 and missing.json() == {"detail": "User not found"}


async def test_recording_counts_once_per_message_id(analytics):
    first = await analytics.post("/analytics/carol/messages", json={"message_id": "m-1", "timestamp": TS})
    assert first.status_code == 200 and first.json() == {"message_count": 1}
    again = await analytics.post("/analytics/carol/messages", json={"message_id": "m-1", "timestamp": TS})
    assert again.json() == {"message_count": 1}
    await analytics.post("/analytics/carol/messages", json={"message_id": "m-2", "timestamp": TS})
    assert (await analytics.get("/analytics/carol")).json() == {"message_count": 2}
    metrics = (await analytics.get("/metrics")).text
    assert "analytics_records_total 2.0" in metrics and "analytics_duplicates_total 1.0" in metrics


async def test_batch_records_in_order_and_ignores_duplicates(analytics):
    items = [
        {"user_id": "dave", "message_id": "a", "timestamp": TS},
        {"user_id": "erin", "message_id": "a", "timestamp": TS},
        {"user_id": "dave", "message_id": "b", "timestamp": TS},
        {"user_id": "dave", "message_id": "a", "timestamp": TS},
    ]
    response = await analytics.post("/messages/batch", json={"items": items})
    assert response.status_code == 200
    assert [(r["user_id"], r["message_count"], r["duplicate"]) for r in response.json()["results"]] == [
        ("dave", 1, False),
        ("erin", 1, False),
        ("dave", 2, False),
        ("dave", 2, True),
    ]


@pytest.mark.parametrize(
    "body",
    [
        {"message_id": "m", "timestamp": "yesterday"},
        {"message_id": "m", "timestamp": "2025-04-06T12:00:00"},  # no zone: ambiguous
        {"message_id": "", "timestamp": TS},
        {"message_id": "a/b", "timestamp": TS},
        {"message_id": "m", "timestamp": TS, "extra": 1},
        {"timestamp": TS},
    ],
)
async def test_bad_records_are_422(analytics, body):
    response = await analytics.post("/analytics/carol/messages", json=body)
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], list)


async def test_health_endpoints(analytics):
    assert (await analytics.get("/healthz")).json() == {"status": "ok"}
    assert (await analytics.get("/readyz")).json() == {"status": "ok", "database": "ok"}
    response = await analytics.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"


async def test_token_guards_every_analytics_route(sqlite_url):
    app = create_app(Settings(database_url=sqlite_url, api_token="s3cret", seed_demo_data=True))
    async for client in asgi_client(app, "http://analytics"):
        assert (await client.get("/analytics/alice")).status_code == 401
        wrong = await client.get("/analytics/alice", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json() == {"detail": "Missing or invalid bearer token"}
        ok = await client.get("/analytics/alice", headers={"Authorization": "Bearer s3cret"})
        assert ok.json() == {"message_count": 5}
        assert (await client.get("/healthz")).status_code == 200


async def test_batches_over_the_limit_are_refused(sqlite_url):
    app = create_app(Settings(database_url=sqlite_url, max_batch=2))
    async for client in asgi_client(app, "http://analytics"):
        items = [{"user_id": "u", "message_id": str(i), "timestamp": TS} for i in range(3)]
        response = await client.post("/messages/batch", json={"items": items})
        assert response.status_code == 413


async def test_counts_survive_a_restart(sqlite_url):
    for expected in (1, 2):
        app = create_app(Settings(database_url=sqlite_url))
        async for client in asgi_client(app, "http://analytics"):
            await client.post("/analytics/zed/messages", json={"message_id": f"m{expected}", "timestamp": TS})
            assert (await client.get("/analytics/zed")).json() == {"message_count": expected}


async def test_concurrent_http_records_lose_nothing(analytics):
    responses = await asyncio.gather(
        *(analytics.post("/analytics/busy/messages", json={"message_id": f"m{i}", "timestamp": TS}) for i in range(200))
    )
    assert {r.status_code for r in responses} == {200}
    assert (await analytics.get("/analytics/busy")).json() == {"message_count": 200}


@pytest.mark.postgres
async def test_readiness_follows_the_database():
    import uuid

    import asyncpg

    from tests.conftest import POSTGRES_URL

    name = f"readyz_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(POSTGRES_URL)
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        app = create_app(Settings(database_url=POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"))
        async for client in asgi_client(app, "http://analytics"):
            assert (await client.get("/readyz")).status_code == 200
            await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
            response = await client.get("/readyz")
            assert response.status_code == 503
            assert response.json()["status"] == "unavailable"
            assert response.headers["retry-after"] == "2", "the next probe of the database (ANALYTICS_DATABASE_RETRY_AFTER)"
            assert (await client.get("/healthz")).status_code == 200, "liveness never depends on the database"
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()
