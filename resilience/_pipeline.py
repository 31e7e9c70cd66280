"""The pipeline: deadline -> bulkhead -> retry -> circuit breaker -> attempt timeout -> call."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import tenacity

from ._breaker import Admission, CircuitBreaker
from ._budget import RetryBudget
from ._bulkhead import Bulkhead
from ._classify import Classifier, Failure
from ._clock import Clock, SystemClock
from ._events import Event, EventName, Hook, log_event
from ._outcome import Fallback, Ok, Outcome, Reason
from ._policy import Policy

T = TypeVar("T")

Attempt = Callable[[float], Awaitable[T]]
"""One attempt; it receives the seconds it may take (already clipped to the deadline)."""


class _Rejected(Exception):
    """An attempt that never reached the network (open breaker): ends the retries at once."""


class _Unknown(Exception):
    """Wraps an error the classifier does not know, so tenacity stops and we re-raise it."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class Pipeline:
    """Configured once per target and shared by all callers; each call gets fresh retry state.

    `on` is required: it says which errors are transient (see `classify_httpx`). Errors it
    does not know propagate unchanged, so a bug is never hidden as a fallback.
    """

    def __init__(
        self,
        target: str,
        policy: Policy,
        *,
        on: Classifier,
        clock: Clock | None = None,
        hooks: Sequence[Hook] = (log_event,),
        rng: random.Random | None = None,
    ) -> None:
        self.target = target
        self.policy = policy
        self._classify = on
        self._clock = clock or SystemClock()
        self._hooks = tuple(hooks)
        self._rng = rng or random.Random()
        self.breaker = CircuitBreaker(
            target,
            failures=policy.breaker_failures,
            reset=policy.breaker_reset,
            clock=self._clock,
            emit=self._emit_event,
        )
        self.budget = RetryBudget(
            ratio=policy.budget_ratio,
            reserve=policy.budget_reserve,
            refill_per_second=policy.budget_refill_per_second,
            clock=self._clock,
        )
        self.bulkhead = Bulkhead(policy.bulkhead)

    async def call(self, attempt: Attempt[T], *, idempotent: bool = True, deadline: float | None = None) -> Outcome[T]:
        """Run `attempt` under the policy; never raises for a classified failure.

        `deadline` (seconds) shortens this call's deadline below the policy's, for a caller
        that has less time left than that (a model call inside an agent run, say).
        """
        seconds = self.policy.deadline if deadline is None else min(deadline, self.policy.deadline)
        ends_at = self._clock.monotonic() + seconds
        if not self.bulkhead.try_enter():
            self._emit("bulkhead_rejected", in_flight=self.bulkhead.in_flight)
            return self._fallback(Fallback("bulkhead_full"))
        try:
            self.budget.deposit()
            return await self._retrying(attempt, ends_at, self.policy.attempts if idempotent else 1)
        finally:
            self.bulkhead.leave()

    async def _retrying(self, attempt: Attempt[T], deadline: float, attempts: int) -> Outcome[T]:
        # Fast path: most calls succeed at once, and building tenacity's machinery costs ~40 us.
        # It is built only when a retry may be needed, and replays the first failure as its
        # attempt 1, so waits, stops and events are exactly those of a tenacity-only loop.
        number = 1
        stop_reason: list[Reason] = []
        try:
            try:
                return Ok(await self._one_attempt(attempt, deadline), attempts=1)
            except Exception as error:
                if attempts == 1 or not self._is_transient(error):
                    raise
                first_failure = error
            retrying = tenacity.AsyncRetrying(
                retry=tenacity.retry_if_exception(self._is_transient),
                wait=self._wait,
                stop=lambda state: self._stop(state, deadline, attempts, stop_reason),
                sleep=self._clock.sleep,
                before_sleep=self._before_sleep,
                reraise=True,
            )
            async for attempt_manager in retrying:
                number = attempt_manager.retry_state.attempt_number
                with attempt_manager:
                    if number == 1:
                        raise first_failure
                    value = await self._one_attempt(attempt, deadline)
            return Ok(value, attempts=number)
        except _Unknown as unknown:
            raise unknown.error from None
        except _Rejected:
            return self._fallback(Fallback("breaker_open", attempts=number - 1))
        except Exception as error:  # only classified failures get here (see _one_attempt)
            return self._failed(error, number, stop_reason[0] if stop_reason else None)

    def _failed(self, error: Exception, attempts: int, stop_reason: Reason | None) -> Fallback:
        failure = self._classify(error)
        assert failure is not None
        return self._fallback(Fallback(stop_reason or failure.reason, attempts=attempts, error=error, status=failure.status))

    async def _one_attempt(self, attempt: Attempt[T], deadline: float) -> T:
        admission = self.breaker.admit()
        if admission == "reject":
            raise _Rejected
        remaining = deadline - self._clock.monotonic()
        try:
            async with asyncio.timeout(remaining):
                value = await attempt(remaining)
        except asyncio.CancelledError:
            self.breaker.release(admission)
            raise
        except Exception as error:
            self._judge(error, admission)
            raise
        self.breaker.record_success(admission)
        return value

    def _judge(self, error: Exception, admission: Admission) -> None:
        failure = self._classify(error)
        if failure is None:
            self.breaker.release(admission)
            raise _Unknown(error) from error
        self._emit("attempt_failed", reason=failure.reason, status=failure.status, error=type(error).__name__)
        if failure.transient:
            self.breaker.record_failure(admission)
        else:
            self.breaker.record_success(admission)

    def _is_transient(self, error: BaseException) -> bool:
        if isinstance(error, _Rejected | _Unknown):
            return False
        failure = self._classify(error)
        return failure is not None and failure.transient

    def _wait(self, state: tenacity.RetryCallState) -> float:
        # Full jitter (AWS): uniform in [0, min(max, initial * 2**n)], but never sooner than
        # the peer's Retry-After.
        ceiling = min(self.policy.backoff_max, self.policy.backoff_initial * 2 ** (state.attempt_number - 1))
        delay = self._rng.uniform(0, ceiling)
        failure = self._failure_of(state)
        if failure is not None and failure.retry_after is not None:
            delay = max(delay, failure.retry_after)
        return delay

    def _stop(self, state: tenacity.RetryCallState, deadline: float, attempts: int, why: list[Reason]) -> bool:
        if state.attempt_number >= attempts:
            return True
        if self.breaker.state == "open":
            why.append("breaker_open")
            return True  # an open breaker ends the retries at once, without a backoff sleep
        failure = self._failure_of(state)
        if failure is not None and failure.retry_after is not None and failure.retry_after > self.policy.retry_after_max:
            return True  # the peer asked for more patience than a chat request has
        if self._clock.monotonic() + state.upcoming_sleep >= deadline:
            why.append("deadline")
            return True
        if not self.budget.try_withdraw():
            why.append("budget_exhausted")
            self._emit("budget_exhausted", tokens=self.budget.tokens)
            return True
        return False

    def _before_sleep(self, state: tenacity.RetryCallState) -> None:
        self._emit("retry_scheduled", attempt=state.attempt_number, sleep=round(state.upcoming_sleep, 4))

    def _failure_of(self, state: tenacity.RetryCallState) -> Failure | None:
        error = state.outcome.exception() if state.outcome is not None else None
        return self._classify(error) if error is not None else None

    def _fallback(self, fallback: Fallback) -> Fallback:
        self._emit("fallback", reason=fallback.reason, attempts=fallback.attempts, status=fallback.status)
        return fallback

    def _emit(self, name: EventName, **fields: Any) -> None:
        self._emit_event(Event(name, self.target, fields))

    def _emit_event(self, event: Event) -> None:
        for hook in self._hooks:
            hook(event)
