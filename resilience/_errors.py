"""The exceptions of `resilience`; callers normally see fallbacks as data, not these.

Exception
 └── ResilienceError
      ├── ConfigurationError   (also a ValueError: a policy that cannot work)
      ├── FallbackError        (Outcome.unwrap() on a Fallback; carries .fallback)
      └── InvalidResponseError (raise it from an attempt when a reply cannot be parsed)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._outcome import Fallback


class ResilienceError(Exception):
    """Base of every error this package raises."""


class ConfigurationError(ResilienceError, ValueError):
    """A policy value that cannot work, caught when the policy is built."""


class FallbackError(ResilienceError):
    """Raised by `Outcome.unwrap()` when the call ended in a fallback."""

    def __init__(self, fallback: Fallback) -> None:
        super().__init__(f"call fell back: {fallback.reason}")
        self.fallback = fallback


class InvalidResponseError(ResilienceError):
    """The peer answered, but not with something the caller can use (never retried)."""


class Rejected(Exception):
    """Internal: an attempt that never reached the network (open breaker); ends the retries."""


class Unknown(Exception):
    """Internal: wraps an error the classifier does not know, so the retries stop and it is re-raised."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
