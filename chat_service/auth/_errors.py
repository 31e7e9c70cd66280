"""Why a request could not be authenticated; the API layer turns each into its HTTP answer."""

from __future__ import annotations


class AuthError(Exception):
    """Base of every authentication failure."""


class MissingToken(AuthError):
    """No bearer token: the request carries no `Authorization: Bearer ...` header."""


class InvalidToken(AuthError):
    """A token was presented and refused.

    `reason` is a short fixed code (for logs and metrics); `detail` is a fixed sentence for the
    client. Neither ever contains the token or any part of it.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class KeysUnavailable(AuthError):
    """No verification key has been loaded yet (the JWKS endpoint has not answered since start-up)."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("no verification keys loaded yet")
        self.retry_after = retry_after
