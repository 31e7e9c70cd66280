"""What end-user auth costs per chat: `flock /work/.bench.lock uv run python -m load_tests.bench_auth`.

In process, on uvloop, with every key already cached (JWKS fetched once from an in-memory
transport). Two measurements, each in alternating rounds so drift hits both sides equally:

- verify: `Authenticator.authenticate(header)` alone, for HS256, RS256 (2048-bit) and ES256 (P-256);
- added to a request: the same FastAPI route with and without `caller: CallerDep` +
  `acting_user(...)`, driven through the ASGI interface, back to back in each round; the
  difference is what auth adds to a request, FastAPI's dependency machinery included (with
  auth off: what the unused dependency costs).

Each twice: for a new token (the verified-token cache off, so every call checks the signature)
and for a known one (a user's next chats with the same token: the cache answers). Last, the bare
signature checks (hashlib, cryptography): the floor under any JWT library.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import hmac
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from fastapi import FastAPI
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from prometheus_client import CollectorRegistry

from chat_service.api.auth import CallerDep, acting_user
from chat_service.auth import Authenticator, JwksKeys, SecretKey
from chat_service.core.metrics import ChatMetrics

SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
ISSUER, AUDIENCE = "https://idp.bench", "daca-chat"


def _claims() -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 3600}


async def authenticators(cache_size: int) -> dict[str, tuple[Authenticator | None, str]]:
    """Per mode: the authenticator and the `Authorization` header of a valid token for alice."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    key_set = {
        "keys": [
            {**RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True), "kid": "rsa", "use": "sig"},
            {**ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True), "kid": "ec", "use": "sig"},
        ]
    }
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda _: httpx.Response(200, json=key_set)))
    jwks = JwksKeys(client, "https://idp.bench/jwks", algorithms=("ES256", "RS256"))
    assert await jwks.refresh()
    common: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, "cache_size": cache_size}
    hs = Authenticator(SecretKey(SECRET.encode(), ["HS256"]), algorithms=["HS256"], **common)
    asymmetric = Authenticator(jwks, algorithms=["ES256", "RS256"], **common)
    return {
        "off": (None, ""),
        "HS256": (hs, "Bearer " + jwt.encode(_claims(), SECRET, algorithm="HS256")),
        "RS256": (asymmetric, "Bearer " + jwt.encode(_claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa"})),
        "ES256": (asymmetric, "Bearer " + jwt.encode(_claims(), ec_key, algorithm="ES256", headers={"kid": "ec"})),
    }


def build_app() -> FastAPI:
    app = FastAPI()

    @app.get("/users/{user_id}/plain")
    async def plain(user_id: str) -> dict[str, str]:
        return {"user_id": user_id}

    @app.get("/users/{user_id}/authed")
    async def authed(user_id: str, caller: CallerDep) -> dict[str, str]:
        return {"user_id": acting_user(caller, user_id)}

    return app


def asgi_caller(app: FastAPI, path: str, authorization: str, state: dict[str, object]) -> Callable[[], Awaitable[None]]:
    headers = [(b"authorization", authorization.encode())] if authorization else []
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": state,
    }

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            raise RuntimeError(f"{path} answered {message['status']}")

    async def call() -> None:
        await app(dict(scope), receive, send)  # type: ignore[arg-type]

    return call


async def per_call_us(action: Callable[[], Awaitable[object]], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        await action()
    return (time.perf_counter() - started) / calls * 1e6


async def measure(rounds: int, calls: int) -> dict[str, dict[str, list[float]]]:
    """Per mode and token kind ("new": every call verifies the signature; "known": the cache answers)."""
    app = build_app()
    metrics = ChatMetrics(CollectorRegistry())
    results: dict[str, dict[str, list[float]]] = {}
    for kind, cache_size in (("new", 0), ("known", 4096)):
        for mode, (authenticator, header) in (await authenticators(cache_size)).items():
            state: dict[str, object] = {"authenticator": authenticator, "metrics": metrics}
            plain = asgi_caller(app, "/users/alice/plain", header, state)
            authed = asgi_caller(app, "/users/alice/authed", header, state)
            verify: list[float] = []
            added: list[float] = []
            for _ in range(calls // 10):  # warm the code paths (and the cache)
                await plain()
                await authed()
            for _ in range(rounds):
                if authenticator is not None:
                    verify.append(await per_call_us(functools.partial(authenticator.authenticate, header), calls))
                without = await per_call_us(plain, calls)
                added.append(await per_call_us(authed, calls) - without)
            results.setdefault(mode, {})[f"verify_{kind}"] = verify
            results[mode][f"request_{kind}"] = added
    return results


def signature_floor(rounds: int, calls: int) -> dict[str, list[float]]:
    """The bare signature checks in `cryptography`/hashlib: what no JWT library can go below."""
    data = b"x" * 300  # about a token's signing input
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_signature = rsa_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    ec_signature = ec_key.sign(data, ec.ECDSA(hashes.SHA256()))
    checks: dict[str, Callable[[], object]] = {
        "HS256": lambda: hmac.new(SECRET.encode(), data, hashlib.sha256).digest(),
        "RS256": lambda: rsa_key.public_key().verify(rsa_signature, data, padding.PKCS1v15(), hashes.SHA256()),
        "ES256": lambda: ec_key.public_key().verify(ec_signature, data, ec.ECDSA(hashes.SHA256())),
    }
    floor: dict[str, list[float]] = {name: [] for name in checks}
    for _ in range(rounds):
        for name, check in checks.items():
            started = time.perf_counter()
            for _ in range(calls // 4):
                check()
            floor[name].append((time.perf_counter() - started) / (calls // 4) * 1e6)
    return floor


def _cell(samples: list[float]) -> str:
    if not samples:
        return "-"
    return f"{statistics.median(samples):.1f} [{min(samples):.1f}, {max(samples):.1f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    import uvloop

    results = uvloop.run(measure(args.rounds, args.calls))
    print(f"end-user auth, us per call: median [min, max] of {args.rounds} rounds of {args.calls} calls, JWKS keys cached")
    print("new token: the signature is checked on every call; known token: the verified-token cache answers")
    columns = ("verify_new", "verify_known", "request_new", "request_known")
    titles = ("verify, new token", "verify, known token", "added to a request, new", "added to a request, known")
    print(f"{'mode':<6}" + "".join(f"{title:>28}" for title in titles))
    for mode, row in results.items():
        print(f"{mode:<6}" + "".join(f"{_cell(row[column]):>28}" for column in columns))
    floor = signature_floor(args.rounds, args.calls)
    print("the signature check alone (cryptography / hashlib), us: " + ", ".join(f"{k} {_cell(v)}" for k, v in floor.items()))


if __name__ == "__main__":
    main()
