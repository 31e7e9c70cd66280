"""Bearer token verification with pyjwt: algorithms fixed by configuration, claims checked, `sub` a user id."""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import jwt
from jwt import PyJWK

from servicekit.validation import USER_ID_PATTERN

from ._errors import InvalidToken, MissingToken
from ._keys import KeySet, secret_key_set
from ._verified import VerifiedTokens

# Far above any real token (an IdP's access token is 1-2 KB); bounds the work a garbage header costs.
MAX_TOKEN_CHARS = 8192
_USER_ID = re.compile(USER_ID_PATTERN)
# Hostile input can make the JSON decoder raise more than pyjwt's own errors (deep nesting, huge numbers).
_FAR_FUTURE = 1e12  # seconds since 1970, year ~33,700: an `exp` beyond is verified but not remembered
_PARSE_ERRORS = (jwt.PyJWTError, ValueError, TypeError, RecursionError, OverflowError)


def _peek_header(token: str) -> dict[str, Any]:
    """The JOSE header, read only to pick the key; pyjwt then parses and verifies the whole token.

    pyjwt's `get_unverified_header` decodes and validates all three segments character by
    character (~12 us a token, measured); this reads the first one (~2 us). A header this lenient
    read accepts but pyjwt does not is refused by pyjwt a moment later.
    """
    segment = token.partition(".")[0]
    header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    if not isinstance(header, dict):
        raise ValueError("the JOSE header is not an object")
    return header


class KeySource(Protocol):
    @property
    def loaded(self) -> bool: ...

    @property
    def current(self) -> KeySet | None:
        """The key set in use; a new object whenever the keys change."""

    async def key_for(self, kid: str | None, alg: str) -> PyJWK: ...

    def retry_after(self) -> float:
        """Seconds until keys that are not loaded may be fetched again (at least 1)."""


class SecretKey:
    """A shared HMAC secret as a key source: always loaded, the token's `kid` is not consulted."""

    loaded = True

    def __init__(self, secret: bytes, algorithms: Iterable[str]) -> None:
        self._keys = secret_key_set(secret, algorithms)

    @property
    def current(self) -> KeySet:
        return self._keys

    def retry_after(self) -> float:
        return 1.0  # always loaded: never asked while unready

    async def key_for(self, kid: str | None, alg: str) -> PyJWK:
        found = self._keys.find(None, alg)
        if found is None:
            raise InvalidToken("algorithm", "Token algorithm not allowed")
        return found


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated end user: `subject` is the token's `sub`, already checked against the user-id rule."""

    subject: str
    claims: Mapping[str, Any] = field(repr=False, compare=False)  # may hold personal data: never in a repr or log


def _refusal(error: BaseException) -> InvalidToken:
    # Fixed sentences only: pyjwt's own messages can quote header values from the token.
    if isinstance(error, jwt.ExpiredSignatureError):
        return InvalidToken("expired", "Token expired")
    if isinstance(error, jwt.ImmatureSignatureError):
        return InvalidToken("not_yet_valid", "Token not valid yet")
    if isinstance(error, jwt.InvalidAudienceError):
        return InvalidToken("audience", "Token audience not accepted")
    if isinstance(error, jwt.InvalidIssuerError):
        return InvalidToken("issuer", "Token issuer not accepted")
    if isinstance(error, jwt.MissingRequiredClaimError) and error.claim in ("exp", "sub", "iss", "aud"):
        return InvalidToken(f"missing_{error.claim}", f"Token has no '{error.claim}' claim")
    if isinstance(error, jwt.InvalidSignatureError):
        return InvalidToken("signature", "Token signature does not verify")
    if isinstance(error, jwt.InvalidAlgorithmError):
        return InvalidToken("algorithm", "Token algorithm not allowed")
    return InvalidToken("malformed", "Malformed token")


class Authenticator:
    """Turns an `Authorization` header into a `Caller`, or raises an `AuthError`; configured once, shared.

    The algorithm comes from configuration: a token's `alg` must be one of `algorithms` and must fit
    the key it names (pyjwt verifies with the algorithm the key was bound to), so `alg: none` and
    HS/RS confusion are refused before any signature is computed. `exp` and `sub` are required;
    `iss` and `aud` are required and checked when configured. Tokens that verified are remembered
    (`cache_size` of them, see `VerifiedTokens`) until they expire or the keys change.
    """

    def __init__(
        self,
        keys: KeySource,
        *,
        algorithms: Iterable[str],
        issuer: str | None = None,
        audience: str | None = None,
        leeway: float = 30.0,
        cache_size: int = 4096,
    ) -> None:
        self.keys = keys
        self._algorithms = frozenset(algorithms)
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        # Without a configured audience, pyjwt would refuse every token that names one: do not check it.
        self._jwt = jwt.PyJWT(options={"require": ["exp", "sub"], "verify_aud": audience is not None})
        self._verified: VerifiedTokens[Caller] = VerifiedTokens(cache_size)

    @property
    def ready(self) -> bool:
        """False while no verification key has been loaded (JWKS not fetched yet)."""
        return self.keys.loaded

    def retry_after(self) -> int:
        """Whole seconds a client should wait while not ready: until the next key fetch."""
        return math.ceil(self.keys.retry_after())

    async def authenticate(self, authorization: str | None) -> Caller:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            raise MissingToken
        token = token.strip()
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise InvalidToken("malformed", "Malformed token")
        known = self._verified.get(token, self.keys.current)
        if known is not None:
            return known
        try:
            header = _peek_header(token)
        except _PARSE_ERRORS:
            raise InvalidToken("malformed", "Malformed token") from None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise InvalidToken("algorithm", "Token algorithm not allowed")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("malformed", "Malformed token")
        key = await self.keys.key_for(kid, alg)
        try:
            claims: dict[str, Any] = self._jwt.decode(
                token, key, algorithms=[alg], audience=self._audience, issuer=self._issuer, leeway=self._leeway
            )
        except _PARSE_ERRORS as error:
            raise _refusal(error) from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or _USER_ID.fullmatch(subject) is None:
            raise InvalidToken("subject", "Token subject is not a valid user id")
        caller = Caller(subject, MappingProxyType(claims))  # shared by every request with this token: read-only
        expires = claims["exp"]  # pyjwt checked it converts to an int; remember only plain, sane numbers
        if type(expires) in (int, float) and expires < _FAR_FUTURE:
            # The key set read now is the one `key_for` answered from: there was no await since.
            self._verified.put(token, caller, expires + self._leeway, self.keys.current)
        return caller
