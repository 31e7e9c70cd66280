"""A call's result as data: the value, or a fallback that names why."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Literal, TypeAlias, TypeVar

from ._errors import FallbackError

T = TypeVar("T")

Reason: TypeAlias = Literal[
    "breaker_open",
    "budget_exhausted",
    "bulkhead_full",
    "connect",
    "deadline",
    "invalid_response",
    "status",
    "timeout",
    "transport",
]


@dataclass(frozen=True, slots=True)
class Ok(Generic[T]):
    """The call succeeded after `attempts` network attempts."""

    value: T
    attempts: int = 1

    def unwrap(self) -> T:
        return self.value


@dataclass(frozen=True, slots=True)
class Fallback:
    """The call did not produce a value.

    `reason` says why; `error` is the last error seen (None when nothing was attempted);
    `status` is the last HTTP status when there was one.
    """

    reason: Reason
    attempts: int = 0
    error: BaseException | None = None
    status: int | None = None

    def unwrap(self) -> object:
        raise FallbackError(self)


Outcome: TypeAlias = Ok[T] | Fallback
