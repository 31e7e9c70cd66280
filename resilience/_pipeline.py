"""The pipeline: deadline -> bulkhead -> retry (or hedging) -> circuit breaker -> attempt timeout -> call."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import tenacity
from opentelemetry.trace import StatusCode, Tracer

from ._breaker import Admission, CircuitBreaker
from ._budget import RetryBudget
from ._bulkhead import Bulkhead
from ._classify import Classifier, Failure
from ._clock import Clock, SystemClock
from ._errors import Rejected as _Rejected
from ._errors import Unknown as _Unknown
from ._events import Event, EventName, Hook, log_event
from ._hedging import hedged
from ._outcome import Fallback, Ok, Outcome, Reason
from ._policy import Policy
from ._tracing import add_event, record_outcome

T = TypeVar("T")

Attempt = Callable[[float], Awaitable[T]]
"""One attempt; it receives the seconds it may take, and is cancelled (TimeoutError) past them.

That is `policy.timeouts.read` when another attempt could follow this one with as much time,
and all the time left before the deadline when this is the last attempt the deadline, the
attempt count and the retry budget allow (or a hedged one, or a half-open breaker's probe).
"""


class Pipeline:
    """Configured once per target and shared by all callers; each call gets fresh retry state.

    `on` is required: it says which errors are transient (see `classify_httpx`). Errors it
    does not know propagate unchanged, so a bug is never hidden as a fallback. With a
    `tracer`, each call is a span with a child span per attempt, and every event is added to
    the span it happened in (see `_tracing`); without one, no tracing code runs at all.
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
        tracer: Tracer | None = None,
    ) -> None:
        self.target = target
        self.policy = policy
        self._classify = on
        self._clock = clock or SystemClock()
        self._hooks = (*hooks, add_event) if tracer is not None else tuple(hooks)
        self._tracer = tracer
        self._rng = rng or random.Random()
        self.breaker = CircuitBreaker(
            target,
            reset=policy.breaker_reset,
            clock=self._clock,
            emit=self._emit_event,
            mode=policy.breaker_mode,
            failures=policy.breaker_failures,
            window=policy.breaker_window,
            min_calls=policy.breaker_min_calls,
            failure_rate=policy.breaker_failure_rate,
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
        if self._tracer is None:
            return await self._call(attempt, idempotent, deadline)
        with self._tracer.start_as_current_span(self.target, attributes={"resilience.target": self.target}) as span:
            outcome = await self._call(attempt, idempotent, deadline)
            record_outcome(span, outcome)
            return outcome

    async def _call(self, attempt: Attempt[T], idempotent: bool, deadline: float | None) -> Outcome[T]:
        seconds = self.policy.deadline if deadline is None else min(deadline, self.policy.deadline)
        ends_at = self._clock.monotonic() + seconds
        if not self.bulkhead.try_enter():
            self._emit("bulkhead_rejected", in_flight=self.bulkhead.in_flight)
            return self._fallback(Fallback("bulkhead_full"))
        try:
            self.budget.deposit()
            attempts = self.policy.attempts if idempotent else 1
            if self.policy.hedge_delay is not None and attempts > 1:
                return await hedged(self, attempt, ends_at, attempts)
            return await self._retrying(attempt, ends_at, attempts)
        finally:
            self.bulkhead.leave()

    async def _retrying(self, attempt: Attempt[T], deadline: float, attempts: int) -> Outcome[T]:
        # Fast path: most calls succeed at once, and building tenacity's machinery costs ~40 us.
        # It is built only when a retry may be needed, and replays the first failure as its
        # attempt 1, so waits, stops and events are exactly those of a tenacity-only loop.
        number = 1
        stop_reason: list[Reason] = []
        prepaid = [False]  # the retry token a cut attempt paid for up front (see _one_attempt)
        try:
            try:
                return Ok(await self._one_attempt(attempt, deadline, 1, attempts, prepaid), attempts=1)
            except Exception as error:
                if attempts == 1 or not self._is_transient(error):
                    raise
                first_failure = error
            retrying = tenacity.AsyncRetrying(
                retry=tenacity.retry_if_exception(self._is_transient),
                wait=self._wait,
                stop=lambda state: self._stop(state, deadline, attempts, stop_reason, prepaid),
                sleep=self._clock.sleep,
                before_sleep=self._before_sleep,
                reraise=True,
            )
            async for attempt_manager in retrying:
                number = attempt_manager.retry_state.attempt_number
                with attempt_manager:
                    if number == 1:
                        raise first_failure
                    value = await self._one_attempt(attempt, deadline, number, attempts, prepaid)
            return Ok(value, attempts=number)
        except _Unknown as unknown:
            raise unknown.error from None
        except _Rejected:
            return self._fallback(Fallback("breaker_open", attempts=number - 1))
        except Exception as error:  # only classified failures get here (see _judged)
            return self._failed(error, number, stop_reason[0] if stop_reason else None)

    def _failed(self, error: Exception, attempts: int, stop_reason: Reason | None) -> Fallback:
        failure = self._classify(error)
        assert failure is not None
        return self._fallback(Fallback(stop_reason or failure.reason, attempts=attempts, error=error, status=failure.status))

    async def _one_attempt(self, attempt: Attempt[T], deadline: float, number: int, attempts: int, prepaid: list[bool]) -> T:
        admission = self.breaker.admit()
        if admission == "reject":
            raise _Rejected
        remaining = deadline - self._clock.monotonic()
        cap = self.policy.timeouts.read
        # Cut this attempt at `cap` only if a retry could still get a full `cap` after it; the
        # last attempt gets all the time left: a peer that answers in 0.3 s is slow, not down.
        # The retry's token is taken now, so concurrent calls cannot spend it while we wait:
        # an attempt is cut only for a retry that will happen.
        if not (
            admission == "pass"
            and number < attempts
            and remaining - cap - self._backoff_ceiling(number) >= cap
            and self.budget.try_withdraw()
        ):
            return await self._judged(attempt, admission, remaining, number)
        prepaid[0] = True
        try:
            value = await self._judged(attempt, admission, cap, number, capped=True)
        except BaseException as error:
            if not self._is_transient(error):  # no retry follows: an answer, a bug, or cancelled
                self._refund(prepaid)
            raise
        self._refund(prepaid)
        return value

    def _refund(self, prepaid: list[bool]) -> None:
        prepaid[0] = False
        self.budget.refund()

    async def _judged(self, attempt: Attempt[T], admission: Admission, allowed: float, number: int, *, capped: bool = False) -> T:
        """Run one admitted attempt (the call's `number`th) within `allowed` seconds and report it to the breaker."""
        if self._tracer is None:
            return await self._judged_untraced(attempt, admission, allowed, capped)
        attributes: dict[str, str | int | float] = {
            "resilience.target": self.target,
            "resilience.attempt": number,
            "resilience.attempt.timeout_s": allowed,
        }
        # The exception itself is not recorded: its message may quote the peer (a provider's
        # error text); the `attempt_failed` event says what the pipeline made of it.
        with self._tracer.start_as_current_span(
            f"{self.target} attempt", attributes=attributes, record_exception=False, set_status_on_exception=False
        ) as span:
            try:
                return await self._judged_untraced(attempt, admission, allowed, capped)
            except BaseException as error:
                span.set_status(StatusCode.ERROR, type(error).__name__)
                raise

    async def _judged_untraced(self, attempt: Attempt[T], admission: Admission, allowed: float, capped: bool) -> T:
        try:
            async with self._clock.timeout(allowed):
                value = await attempt(allowed)
        except BaseException as error:
            if not isinstance(error, Exception):  # cancelled: the caller gave up, no verdict
                self.breaker.release(admission)
                raise
            self._judge(error, admission, capped)
            raise
        self.breaker.record_success(admission)
        return value

    def _judge(self, error: Exception, admission: Admission, capped: bool) -> None:
        failure = self._classify(error)
        if failure is None:
            self.breaker.release(admission)
            raise _Unknown(error) from error
        self._emit("attempt_failed", reason=failure.reason, status=failure.status, error=type(error).__name__)
        if capped and failure.reason == "timeout":
            # We cut this attempt short to leave a retry room: that says the peer is slow, not
            # that it is down. The attempt that gets all the time left will give the verdict.
            self.breaker.release(admission)
        elif failure.transient:
            self.breaker.record_failure(admission)
        else:
            self.breaker.record_success(admission)

    def _is_transient(self, error: BaseException) -> bool:
        if isinstance(error, _Rejected | _Unknown):
            return False
        failure = self._classify(error)
        return failure is not None and failure.transient

    def _backoff_ceiling(self, number: int) -> float:
        return min(self.policy.backoff_max, self.policy.backoff_initial * 2.0 ** (number - 1))

    def _backoff(self, number: int, failure: Failure | None) -> float:
        # Full jitter (AWS): uniform in [0, min(max, initial * 2**n)], but never sooner than
        # the peer's Retry-After.
        delay = self._rng.uniform(0, self._backoff_ceiling(number))
        if failure is not None and failure.retry_after is not None:
            delay = max(delay, failure.retry_after)
        return delay

    def _wait(self, state: tenacity.RetryCallState) -> float:
        return self._backoff(state.attempt_number, self._failure_of(state))

    def _stop(
        self, state: tenacity.RetryCallState, deadline: float, attempts: int, why: list[Reason], prepaid: list[bool]
    ) -> bool:
        if state.attempt_number >= attempts:
            return True
        paid = prepaid[0]
        stop, reason = self._refuse_retry(self._failure_of(state), deadline, state.upcoming_sleep, paid=paid)
        if stop and paid:
            self._refund(prepaid)
        prepaid[0] = False
        if reason is not None:
            why.append(reason)
        return stop

    def _refuse_retry(
        self, failure: Failure | None, deadline: float, sleep: float, *, paid: bool = False
    ) -> tuple[bool, Reason | None]:
        """Whether to stop instead of starting another attempt after `sleep` seconds, and why.

        The retry budget is spent only when everything else lets the retry go ahead (and not
        at all when the attempt before it already `paid`).
        """
        if self.breaker.state == "open":
            return True, "breaker_open"  # an open breaker ends the retries at once, without a backoff sleep
        if self._asks_too_much(failure):
            return True, None  # the peer asked for more patience than this call has
        if self._clock.monotonic() + sleep >= deadline:
            return True, "deadline"
        if not paid and not self.budget.try_withdraw():
            self._emit("budget_exhausted", tokens=self.budget.tokens)
            return True, "budget_exhausted"
        return False, None

    def _asks_too_much(self, failure: Failure | None) -> bool:
        return failure is not None and failure.retry_after is not None and failure.retry_after > self.policy.retry_after_max

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
