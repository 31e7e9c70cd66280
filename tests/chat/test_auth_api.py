"""End-user auth on the chat API, in process: who needs a token, what each refusal answers, what stays public."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from asgi_lifespan import LifespanManager
from pydantic import ValidationError

from chat_service.auth import Authenticator, SecretKey
from chat_service.core.config import Settings
from chat_service.main import create_app
from tests.chat.conftest import chat_settings
from tests.fakes.identity import AUDIENCE, ISSUER, SECRET, bearer, claims, hs256, rsa_key, signed

AUTH = {"auth_jwt_secret": SECRET, "auth_issuer": ISSUER, "auth_audience": AUDIENCE}
ALICE = bearer(hs256(claims("alice", ttl=24 * 3600)))  # minted at import: it must outlive a slow suite


@pytest.fixture
async def chat(chat_with, analytics_transport):
    async with chat_with(analytics_transport, **AUTH) as client:
        yield client


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/chat/"), ("GET", "/users/alice"), ("GET", "/users/alice/analytics")],
)
async def test_user_routes_need_a_token(chat, method, path):
    response = await chat.request(method, path, json={"user_id": "alice", "text": "hi"} if method == "POST" else None)
    assert response.status_code == 401
    assert response.json() == {"detail": "Bearer token required"}
    assert response.headers["www-authenticate"] == "Bearer"


async def test_a_refused_token_says_why_in_the_challenge_and_never_echoes_it(chat):
    token = hs256(claims("alice", ttl=-3600))
    response = await chat.post("/chat/", json={"user_id": "alice", "text": "hi"}, headers=bearer(token))
    assert response.status_code == 401
    assert response.json() == {"detail": "Token expired"}
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token", error_description="Token expired"'
    assert token not in response.text and token.split(".")[1] not in str(response.headers)
    metrics = (await chat.get("/metrics")).text
    assert 'chat_auth_refusals_total{reason="expired"} 1.0' in metrics


async def test_the_token_acts_for_its_own_subject_only(chat):
    ok = await chat.post("/chat/", json={"user_id": "alice", "text": "hi"}, headers=ALICE)
    assert ok.status_code == 200 and "5 messages" in ok.json()["reply"]
    assert (await chat.get("/users/alice/analytics", headers=ALICE)).json()["message_count"] >= 5
    assert (await chat.get("/users/alice", headers=ALICE)).json() == {"user_id": "alice", "role": "guest"}
    for response in (
        await chat.post("/chat/", json={"user_id": "bob", "text": "hi"}, headers=ALICE),
        await chat.get("/users/bob/analytics", headers=ALICE),
        await chat.get("/users/bob", headers=ALICE),
    ):
        assert response.status_code == 403
        assert response.json() == {"detail": "Token subject is not this user"}
        assert "message_count" not in response.text


async def test_the_user_check_comes_before_any_work(chat):
    """A mismatched user learns nothing: not even whether the text would have been accepted."""
    response = await chat.post("/chat/", json={"user_id": "bob", "text": "   "}, headers=ALICE)
    assert response.status_code == 403


@pytest.mark.parametrize("path", ["/", "/healthz", "/readyz", "/metrics", "/health/dependencies", "/openapi.json", "/docs"])
async def test_operational_routes_stay_public(chat, path):
    assert (await chat.get(path)).status_code == 200


async def test_the_rate_limit_counts_per_authenticated_subject(chat_with, analytics_transport):
    bob = bearer(hs256(claims("bob")))
    async with chat_with(analytics_transport, rate_limit_per_minute=2, **AUTH) as chat:
        statuses = [
            (await chat.post("/chat/", json={"user_id": "alice", "text": "hi"}, headers=ALICE)).status_code for _ in range(3)
        ]
        assert statuses == [200, 200, 429]
        assert (await chat.post("/chat/", json={"user_id": "bob", "text": "hi"}, headers=bob)).status_code == 200
        # Refused requests are not counted against the user they claimed to be.
        assert (await chat.post("/chat/", json={"user_id": "bob", "text": "hi"}, headers=ALICE)).status_code == 403
        assert (await chat.post("/chat/", json={"user_id": "bob", "text": "hi"}, headers=bob)).status_code == 200


async def test_docs_show_the_bearer_scheme_on_the_routes_that_need_it(chat):
    schema = (await chat.get("/openapi.json")).json()
    assert schema["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "A JWT from the identity provider; its `sub` is the user id",
    }
    secured = {(path, method) for path, item in schema["paths"].items() for method, op in item.items() if "security" in op}
    assert secured == {
        ("/chat/", "post"),
        ("/chat/stream", "post"),
        ("/users/{user_id}", "get"),
        ("/users/{user_id}/analytics", "get"),
        ("/sessions/{session_id}", "get"),
        ("/sessions/{session_id}", "delete"),
    }
    assert {"401", "403"} <= set(schema["paths"]["/chat/"]["post"]["responses"])


async def test_with_auth_off_the_schema_asks_for_no_token(chat_with, analytics_transport):
    async with chat_with(analytics_transport) as chat:
        schema = (await chat.get("/openapi.json")).json()
        assert "securitySchemes" not in schema.get("components", {})
        assert (await chat.post("/chat/", json={"user_id": "bob", "text": "hi"}, headers=ALICE)).status_code == 200


async def test_browsers_may_send_the_authorization_header(chat):
    preflight = await chat.options(
        "/chat/",
        headers={
            "Origin": "http://localhost:3000",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert preflight.status_code == 200
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when the block ends: nothing listens there


async def test_jwks_down_at_start_up_starts_anyway_unready_and_answers_503(chat_with, analytics_transport):
    url = f"http://127.0.0.1:{_closed_port()}/jwks.json"
    async with chat_with(analytics_transport, auth_jwks_url=url, auth_audience=AUDIENCE, auth_jwks_cooldown_seconds=30) as chat:
        ready = await chat.get("/readyz")
        assert ready.status_code == 503 and ready.json()["auth"] == "no verification keys yet"
        # Until the refresher's next fetch, one cooldown after the failed one at start-up.
        assert 1 <= int(ready.headers["retry-after"]) <= 30
        response = await chat.post("/chat/", json={"user_id": "alice", "text": "hi"}, headers=bearer("a.b.c"))
        assert response.status_code == 401  # malformed: refused before any key is needed
        token = signed(claims("alice"), rsa_key("a"), "rsa-1", "RS256")
        response = await chat.post("/chat/", json={"user_id": "alice", "text": "hi"}, headers=bearer(token))
        assert response.status_code == 503
        assert response.json() == {"detail": "Cannot verify tokens right now"}
        assert 1 <= int(response.headers["retry-after"]) <= 30
        assert 'chat_auth_jwks_fetches_total{outcome="unreachable"}' in (await chat.get("/metrics")).text


async def test_the_jwks_client_and_refresher_close_with_the_app(tmp_path, analytics_transport):
    url = f"http://127.0.0.1:{_closed_port()}/jwks.json"
    app = create_app(chat_settings(tmp_path, auth_jwks_url=url), transport=analytics_transport)
    async with LifespanManager(app):
        assert [t for t in asyncio.all_tasks() if t.get_name() == "jwks-refresher"]
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("jwks-") and not t.done()]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"auth_jwt_secret": SECRET, "auth_jwks_url": "https://idp.test/jwks"}, "not both"),
        ({"auth_jwt_secret": "too-short"}, "at least 32 bytes"),
        ({"auth_jwt_secret": SECRET, "auth_algorithms": ["HS512"]}, "at least 64 bytes"),
        ({"auth_jwt_secret": SECRET, "auth_algorithms": ["RS256"]}, "CHAT_AUTH_ALGORITHMS"),
        ({"auth_jwt_secret": SECRET, "auth_algorithms": ["none"]}, "CHAT_AUTH_ALGORITHMS"),
        ({"auth_jwks_url": "https://idp.test/jwks", "auth_algorithms": ["HS256"]}, "CHAT_AUTH_ALGORITHMS"),
        ({"auth_jwks_url": "http://idp.test/jwks"}, "must be https"),
        ({"auth_jwks_url": "ftp://127.0.0.1/jwks"}, "must be https"),
        ({"auth_audience": AUDIENCE}, "auth is off"),
        ({"auth_jwt_secret": SECRET, "auth_leeway": 3600}, "auth_leeway"),
    ],
)
def test_settings_that_would_run_weaker_than_they_look_refuse_to_start(settings, message):
    with pytest.raises(ValidationError, match=message):
        Settings(**settings)


def test_settings_defaults_per_mode(monkeypatch):
    assert Settings().auth_enabled is False
    monkeypatch.setenv("CHAT_AUTH_JWT_SECRET", "")  # compose and Kubernetes pass unset variables as ""
    assert Settings().auth_enabled is False
    assert Settings(auth_jwt_secret=SECRET).auth_algorithms == ["HS256"]
    assert Settings(auth_jwks_url="https://idp.test/jwks").auth_algorithms == ["ES256", "RS256"]
    assert Settings(auth_jwks_url="http://127.0.0.1:9/jwks").auth_enabled


MINT = (
    'import jwt,os,time; print(jwt.encode({"sub":"alice","iss":"daca-dev","aud":"daca-chat","exp":int(time.time())+3600},'
    'os.environ["CHAT_AUTH_JWT_SECRET"]))'
)


@pytest.mark.parametrize(("issuer", "audience"), [(None, None), ("daca-dev", "daca-chat")])
def test_the_documented_one_liner_mints_a_token_chat_accepts(issuer, audience):
    """The docs' one-liner works with the quick start (no issuer, audience) and with compose's defaults."""
    assert f"uv run python -c '{MINT}'" in (Path(__file__).parents[2] / "docs" / "auth.md").read_text()
    env = {**os.environ, "CHAT_AUTH_JWT_SECRET": SECRET}
    token = subprocess.run([sys.executable, "-c", MINT], env=env, capture_output=True, text=True, check=True).stdout.strip()
    authenticator = Authenticator(SecretKey(SECRET.encode(), ["HS256"]), algorithms=["HS256"], issuer=issuer, audience=audience)
    assert asyncio.run(authenticator.authenticate(f"Bearer {token}")).subject == "alice"
