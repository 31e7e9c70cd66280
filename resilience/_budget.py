"""A retry budget: retries may spend only what calls have deposited (Finagle, gRPC, Envoy)."""

from __future__ import annotations

from ._clock import Clock


class RetryBudget:
    """Token bucket: every call deposits `ratio`, every retry withdraws 1.

    The bucket starts full at `reserve` tokens and never holds more, and it also refills at
    `refill_per_second` so a quiet service can still retry. Over any run with no refill the
    retries are at most `reserve + ratio * calls`: an outage cannot multiply the load.
    """

    def __init__(self, *, ratio: float, reserve: float, refill_per_second: float, clock: Clock) -> None:
        self._ratio = ratio
        self._capacity = max(reserve, 1.0)
        self._refill = refill_per_second
        self._clock = clock
        self._tokens = float(reserve)
        self._stamp = clock.monotonic()

    @property
    def tokens(self) -> float:
        self._settle()
        return self._tokens

    def deposit(self) -> None:
        """Credit one call."""
        self._settle()
        self._tokens = min(self._capacity, self._tokens + self._ratio)

    def try_withdraw(self) -> bool:
        """Spend one token for a retry; False means the budget forbids it."""
        self._settle()
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def refund(self) -> None:
        """Give back a token withdrawn for a retry that did not happen."""
        self._settle()
        self._tokens = min(self._capacity, self._tokens + 1.0)

    def _settle(self) -> None:
        now = self._clock.monotonic()
        elapsed = now - self._stamp
        self._stamp = now
        if elapsed > 0 and self._refill:
            self._tokens = min(self._capacity, self._tokens + elapsed * self._refill)
