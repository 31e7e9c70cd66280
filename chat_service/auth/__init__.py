"""End-user authentication for chat: bearer JWTs verified with pyjwt, keys from a secret or a JWKS URL.

Framework-free: `Authenticator.authenticate(header)` returns a `Caller` or raises an `AuthError`;
`chat_service.api.auth` turns those into FastAPI dependencies and HTTP answers.
"""

from __future__ import annotations

from ._authenticator import MAX_TOKEN_CHARS, Authenticator, Caller, KeySource, SecretKey
from ._errors import AuthError, InvalidToken, KeysUnavailable, MissingToken
from ._jwks import FetchHook, JwksKeys
from ._keys import ASYMMETRIC_ALGORITHMS, HMAC_ALGORITHMS, HMAC_MIN_BYTES, KeySet, parse_jwks, secret_key_set
from ._setup import open_authenticator

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "HMAC_ALGORITHMS",
    "HMAC_MIN_BYTES",
    "MAX_TOKEN_CHARS",
    "AuthError",
    "Authenticator",
    "Caller",
    "FetchHook",
    "InvalidToken",
    "JwksKeys",
    "KeySet",
    "KeySource",
    "KeysUnavailable",
    "MissingToken",
    "SecretKey",
    "open_authenticator",
    "parse_jwks",
    "secret_key_set",
]
