"""An identity provider for tests: real keys, real signed tokens, and the forged ones attackers send."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

SECRET = "test-secret-0123456789abcdef0123456789abcdef"  # 44 bytes: enough for HS256
ISSUER = "https://idp.test"
AUDIENCE = "daca-chat"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@functools.cache
def rsa_key(name: str) -> rsa.RSAPrivateKey:
    """One RSA key per name, generated once per test session (generation takes ~0.1 s)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def ec_key(name: str) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_jwk(key: PrivateKey, kid: str, **extra: str) -> dict[str, Any]:
    """The key's public half as a JWK, as an identity provider publishes it."""
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    return {**jwk, "kid": kid, "use": "sig", **extra}


def jwks(*keys: dict[str, Any]) -> dict[str, Any]:
    return {"keys": list(keys)}


def write_jwks(path: Path, document: dict[str, Any]) -> None:
    """Replace the file atomically, so a server reading it never sees half a key set."""
    scratch = path.with_suffix(".tmp")
    scratch.write_text(json.dumps(document))
    os.replace(scratch, path)


def claims(sub: object = "alice", *, ttl: float = 300, **extra: object) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + ttl}
    return {k: v for k, v in {**base, **extra}.items() if v is not None}


def hs256(payload: dict[str, Any], secret: str = SECRET, **headers: Any) -> str:
    return jwt.encode(payload, secret, algorithm="HS256", headers=headers or None)


def signed(payload: dict[str, Any], key: PrivateKey, kid: str | None, alg: str) -> str:
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid} if kid else None)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(payload: dict[str, Any], **headers: Any) -> str:
    """`alg: none`: no signature at all."""
    header = {"alg": "none", "typ": "JWT", **headers}
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}."


def hmac_with_public_key(payload: dict[str, Any], key: PrivateKey, kid: str) -> str:
    """HS/RS confusion: HS256 'signed' with the provider's *public* key, which anyone can download."""
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "typ": "JWT", "kid": kid}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
