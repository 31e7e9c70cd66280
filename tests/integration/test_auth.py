"""End-user auth against real uvicorn processes: HS256 with a shared secret, and a JWKS provider that the
test starts, rotates, freezes and kills."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from load_tests.processes import ServiceProcess, analytics_env, chat_env, free_port
from tests.fakes.identity import (
    AUDIENCE,
    ISSUER,
    SECRET,
    bearer,
    claims,
    ec_key,
    hmac_with_public_key,
    hs256,
    jwks,
    public_jwk,
    rsa_key,
    signed,
    unsigned,
    write_jwks,
)

pytestmark = pytest.mark.integration

AUTH_ENV = {"CHAT_AUTH_ISSUER": ISSUER, "CHAT_AUTH_AUDIENCE": AUDIENCE}
INVALID = 'Bearer error="invalid_token"'
WRONG_SECRET = "wrong-secret-0123456789abcdef0123456789ab"


@pytest.fixture(scope="module")
def chat_url(tmp_path_factory) -> Iterator[str]:
    """Chat with HS256 auth in front of a real analytics process (demo data)."""
    work = tmp_path_factory.mktemp("auth")
    analytics = ServiceProcess(
        "analytics_service.main:app",
        log_path=work / "analytics.log",
        env=analytics_env(f"sqlite:///{work}/analytics.sqlite3", ANALYTICS_SEED_DEMO_DATA="true"),
    )
    chat = ServiceProcess(
        "chat_service.main:app",
        log_path=work / "chat.log",
        env=chat_env(analytics.url, work / "outbox.sqlite3", CHAT_AUTH_JWT_SECRET=SECRET, **AUTH_ENV),
    )
    with analytics, chat:
        yield chat.url
    assert "Traceback" not in (work / "chat.log").read_text()


def post_chat(url: str, headers: dict[str, str] | None = None, user: str = "alice") -> httpx.Response:
    return httpx.post(url + "/chat/", json={"user_id": user, "text": "Hello"}, headers=headers, timeout=10)


# Headers are built when a case runs, not at collection: a token minted then (300 s to live) had
# expired by the time a slow machine reached these tests, and every case answered "Token expired".
CASES: dict[str, tuple[Callable[[], dict[str, str] | None], int, str, str | None]] = {
    "no token": (lambda: None, 401, "Bearer token required", "Bearer"),
    "basic auth": (lambda: {"Authorization": "Basic YWxpY2U6cHc="}, 401, "Bearer token required", "Bearer"),
    "garbage": (lambda: bearer("garbage"), 401, "Malformed token", INVALID),
    "expired": (lambda: bearer(hs256(claims(ttl=-3600))), 401, "Token expired", INVALID),
    "wrong key": (lambda: bearer(hs256(claims(), secret=WRONG_SECRET)), 401, "Token signature does not verify", INVALID),
    "alg none": (lambda: bearer(unsigned(claims())), 401, "Token algorithm not allowed", INVALID),
    "RS256 in HS256 mode": (
        lambda: bearer(signed(claims(), rsa_key("a"), "k", "RS256")),
        401,
        "Token algorithm not allowed",
        INVALID,
    ),
    "wrong audience": (lambda: bearer(hs256(claims(aud="another-app"))), 401, "Token audience not accepted", INVALID),
    "wrong issuer": (lambda: bearer(hs256(claims(iss="https://evil.test"))), 401, "Token issuer not accepted", INVALID),
    "missing sub": (lambda: bearer(hs256(claims(sub=None))), 401, "Token has no 'sub' claim", INVALID),
    "sub not a user id": (
        lambda: bearer(hs256(claims(sub="alice/../bob"))),
        401,
        "Token subject is not a valid user id",
        INVALID,
    ),
    "another user's token": (lambda: bearer(hs256(claims("bob"))), 403, "Token subject is not this user", None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_refusal_is_answered_as_stated(chat_url, case):
    make_headers, status, detail, challenge = CASES[case]
    headers = make_headers()
    response = post_chat(chat_url, headers)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"detail": detail}
    if challenge is None:
        assert "www-authenticate" not in response.headers
    else:
        assert response.headers["www-authenticate"].startswith(challenge)
    analytics = httpx.get(chat_url + "/users/alice/analytics", headers=headers, timeout=10)
    assert (analytics.status_code, analytics.json()) == (status, {"detail": detail})


def test_a_valid_token_chats_and_reads_its_own_analytics(chat_url):
    alice = bearer(hs256(claims("alice")))
    response = post_chat(chat_url, alice)
    assert response.status_code == 200 and "messages so far" in response.json()["reply"]
    assert httpx.get(chat_url + "/users/alice/analytics", headers=alice).json()["user_id"] == "alice"
    for path in ("/", "/healthz", "/readyz", "/metrics", "/health/dependencies", "/docs"):
        assert httpx.get(chat_url + path).status_code == 200, path


def _wait_for(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_jwks_keys_are_fetched_rotated_and_served_while_the_provider_is_down(tmp_path: Path):
    key_file = tmp_path / "jwks.json"
    write_jwks(key_file, jwks(public_jwk(rsa_key("idp-1"), "rsa-1"), public_jwk(ec_key("idp-1"), "ec-1")))
    provider = ServiceProcess("tests.fakes.jwks_server:app", env={"JWKS_FILE": str(key_file)}, log_path=tmp_path / "jwks.log")
    chat = ServiceProcess(
        "chat_service.main:app",
        log_path=tmp_path / "chat.log",
        env=chat_env(
            f"http://127.0.0.1:{free_port()}",  # analytics down: counts fall back to 0, chat still answers
            tmp_path / "outbox.sqlite3",
            CHAT_ANALYTICS_READ__ATTEMPTS="1",
            CHAT_AUTH_JWKS_URL=f"{provider.url}/.well-known/jwks.json",
            CHAT_AUTH_JWKS_COOLDOWN_SECONDS="0.5",
            CHAT_AUTH_JWKS_TIMEOUT="0.5",
            **AUTH_ENV,
        ),
    )
    rsa_1 = bearer(signed(claims("alice"), rsa_key("idp-1"), "rsa-1", "RS256"))
    ec_1 = bearer(signed(claims("alice"), ec_key("idp-1"), "ec-1", "ES256"))
    rsa_2 = bearer(signed(claims("alice"), rsa_key("idp-2"), "rsa-2", "RS256"))
    hits = lambda: httpx.get(provider.url + "/hits").json()["jwks"]  # noqa: E731
    try:
        # 1. The provider is down when chat starts: chat starts anyway, unready, and asks to retry.
        chat.start()
        unready = httpx.get(chat.url + "/readyz")
        assert unready.status_code == 503 and int(unready.headers["retry-after"]) >= 1
        waiting = post_chat(chat.url, rsa_1)
        assert waiting.status_code == 503 and int(waiting.headers["retry-after"]) >= 1

        # 2. The provider comes up: the background refresher loads the keys, chat becomes ready.
        provider.start()
        chat.wait_ready(path="/readyz")
        assert post_chat(chat.url, rsa_1).status_code == 200
        assert post_chat(chat.url, ec_1).status_code == 200
        for forged in (
            hmac_with_public_key(claims("alice"), rsa_key("idp-1"), "rsa-1"),
            unsigned(claims("alice"), kid="rsa-1"),
            signed(claims("alice"), rsa_key("attacker"), "rsa-1", "RS256"),
            signed(claims("alice", aud="another-app"), rsa_key("idp-1"), "rsa-1", "RS256"),
        ):
            refused = post_chat(chat.url, bearer(forged))
            assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith(INVALID)

        # 3. Rotation: a token signed with the new key is accepted once its kid is seen; the old key is withdrawn.
        write_jwks(key_file, jwks(public_jwk(rsa_key("idp-2"), "rsa-2")))
        _wait_for(lambda: post_chat(chat.url, rsa_2).status_code == 200)
        withdrawn = post_chat(chat.url, rsa_1)
        assert withdrawn.status_code == 401 and withdrawn.json() == {"detail": "Unknown signing key"}

        # 4. A flood of made-up kids costs the provider at most one fetch per cooldown.
        before, started = hits(), time.monotonic()
        for _ in range(40):
            made_up = bearer(signed(claims("alice"), rsa_key("attacker"), uuid.uuid4().hex, "RS256"))
            assert post_chat(chat.url, made_up).status_code == 401
        assert hits() - before <= (time.monotonic() - started) / 0.5 + 2

        # 5. The provider freezes: cached keys still verify; an unknown kid waits at most the fetch timeout.
        provider.signal(signal.SIGSTOP)
        try:
            assert post_chat(chat.url, rsa_2).status_code == 200
            time.sleep(0.6)  # let the cooldown pass, so that the next unknown kid does try the frozen provider
            started = time.monotonic()
            assert post_chat(chat.url, bearer(signed(claims("alice"), rsa_key("x"), "new-kid", "RS256"))).status_code == 401
            assert time.monotonic() - started < 0.5 + 2.0  # the JWKS timeout plus a generous margin
        finally:
            provider.signal(signal.SIGCONT)

        # 6. The provider is killed: chat keeps verifying from its cache and stays ready.
        provider.kill()
        assert post_chat(chat.url, rsa_2).status_code == 200
        assert httpx.get(chat.url + "/readyz").status_code == 200
    finally:
        chat.stop()
        provider.stop()
    log = (tmp_path / "chat.log").read_text()
    assert '"event": "jwks_refresh_failed"' in log and "Traceback" not in log
