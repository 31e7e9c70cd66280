"""End-user auth for routes: the `CallerDep` dependency, the user check, and the OpenAPI bearer scheme.

Routes that act for a user take `caller: CallerDep` and call `acting_user(caller, user_id)`: it
returns the user id to act for (and to key rate limits, sessions and idempotency keys on), or
answers 403 when a token's subject is not the claimed user. With auth off, `caller` is None and
the claimed user id is taken on its word, as in the tutorial.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security.base import SecurityBase

from servicekit.logging import get_logger

from ..auth import Authenticator, Caller, InvalidToken, KeysUnavailable, MissingToken
from ..core.metrics import ChatMetrics

SCHEME_NAME = "bearerAuth"
log = get_logger("auth")


# The 401/403 every acting-for-a-user route documents (with servicekit.openapi.responses).
AUTH_DESCRIPTIONS: dict[int, str] = {
    401: "Missing, malformed, expired or unverifiable bearer token (only when auth is on)",
    403: "The token's subject is not this user (only when auth is on)",
}
KEYS_UNAVAILABLE = "The identity provider's keys have not been loaded yet; retry after Retry-After"


class BearerAuth(SecurityBase):
    """The bearer scheme as a dependency: the authenticated caller, or None when auth is off.

    A `SecurityBase`, so that FastAPI documents the scheme on every route that depends on it;
    one dependency rather than two, because each level costs a few microseconds per request.
    """

    def __init__(self) -> None:
        self.model = HTTPBearerModel(bearerFormat="JWT", description="A JWT from the identity provider; its `sub` is the user id")
        self.scheme_name = SCHEME_NAME

    async def __call__(self, request: Request) -> Caller | None:
        authenticator: Authenticator | None = request.state.authenticator
        if authenticator is None:
            return None
        try:
            return await authenticator.authenticate(request.headers.get("authorization"))
        except MissingToken:
            _refused(request, "missing")
            raise HTTPException(401, "Bearer token required", headers={"WWW-Authenticate": "Bearer"}) from None
        except InvalidToken as refused:
            _refused(request, refused.reason)
            challenge = f'Bearer error="invalid_token", error_description="{refused.detail}"'
            raise HTTPException(401, refused.detail, headers={"WWW-Authenticate": challenge}) from None
        except KeysUnavailable as unavailable:
            _refused(request, "keys_unavailable")
            retry_after = str(math.ceil(unavailable.retry_after))
            raise HTTPException(503, "Cannot verify tokens right now", headers={"Retry-After": retry_after}) from None


def _refused(request: Request, reason: str) -> None:
    metrics: ChatMetrics = request.state.metrics
    metrics.auth_refusals.labels(reason).inc()
    log.info("token_refused", reason=reason)


get_caller = BearerAuth()
CallerDep = Annotated[Caller | None, Depends(get_caller)]


def acting_user(caller: Caller | None, user_id: str) -> str:
    """The user a request acts for: `user_id`, which must be the token's subject when auth is on (403 otherwise)."""
    if caller is None:
        return user_id
    if caller.subject != user_id:
        raise HTTPException(403, "Token subject is not this user")
    return caller.subject


def without_bearer_scheme(schema: dict[str, Any]) -> None:
    """A schema edit for auth off: the schema must never ask for a token chat ignores."""
    schema.get("components", {}).pop("securitySchemes", None)
    for item in schema["paths"].values():
        for operation in item.values():
            operation.pop("security", None)
