"""The circuit breaker against a reference model, over any history of calls, results and time.

The model keeps every counted attempt in a plain list and recounts the window from it; the
breaker keeps running sums in ring buckets. Hypothesis drives both through the same random
admissions, results (success, failure, cancelled), stale results of attempts admitted earlier, and
steps of time (fractions of a bucket, whole buckets, past the window, past the reset), in both
modes, and after every step the two must agree on the state, the admission, the failures in a
row and the window's counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from resilience import CircuitBreaker, Event
from resilience.testing import FakeClock

BUCKETS = 10  # SlidingWindow's default, which CircuitBreaker uses


@dataclass
class Model:
    """The breaker's rules, written the slow and obvious way."""

    mode: str
    failures: int
    window: float
    min_calls: int
    failure_rate: float
    reset: float
    state: str = "closed"
    opened_at: float = 0.0
    probe_in_flight: bool = False
    consecutive: int = 0
    records: list[tuple[float, bool]] = field(default_factory=list)  # (when, failed), rate mode
    transitions: list[str] = field(default_factory=list)

    def slot(self, now: float) -> int:
        return int(now / (self.window / BUCKETS))

    def counted(self) -> list[bool]:
        """The window as of its newest record: the records of the last BUCKETS slots."""
        if not self.records:
            return []
        head = self.slot(self.records[-1][0])
        return [failed for when, failed in self.records if self.slot(when) > head - BUCKETS]

    def admit(self, now: float) -> str:
        if self.state == "closed":
            return "pass"
        if self.state == "open":
            if now - self.opened_at < self.reset:
                return "reject"
            self.move("half-open", now)
        if self.probe_in_flight:
            return "reject"
        self.probe_in_flight = True
        return "probe"

    def success(self, admission: str, now: float) -> None:
        if admission == "probe":
            self.probe_in_flight = False
            self.move("closed", now)
        elif self.state == "closed":
            self.consecutive = 0
            if self.mode == "rate":
                self.records.append((now, False))

    def failure(self, admission: str, now: float) -> None:
        if admission == "probe":
            self.probe_in_flight = False
            self.move("open", now)
        elif self.state == "closed":
            self.consecutive += 1
            if self.mode == "rate":
                self.records.append((now, True))
            if self.tripped():
                self.move("open", now)

    def release(self, admission: str) -> None:
        if admission == "probe":
            self.probe_in_flight = False

    def tripped(self) -> bool:
        if self.mode == "consecutive":
            return self.consecutive >= self.failures
        window = self.counted()
        return self.consecutive >= self.min_calls or (
            len(window) >= self.min_calls and sum(window) >= self.failure_rate * len(window)
        )

    def move(self, state: str, now: float) -> None:
        self.state = state
        self.transitions.append(state)
        if state == "open":
            self.opened_at = now
        elif state == "closed":
            self.consecutive = 0
            self.records.clear()


class BreakerMatchesItsModel(RuleBasedStateMachine):
    @initialize(
        mode=st.sampled_from(["rate", "consecutive"]),
        failures=st.integers(1, 6),
        window=st.sampled_from([1.0, 2.5, 10.0]),
        min_calls=st.integers(1, 12),
        failure_rate=st.sampled_from([0.1, 0.5, 0.75, 1.0]),
        reset=st.sampled_from([0.5, 5.0]),
    )
    def build(self, mode: str, failures: int, window: float, min_calls: int, failure_rate: float, reset: float) -> None:
        self.clock = FakeClock()
        self.events: list[str] = []

        def emit(event: Event) -> None:
            self.events.append(event.fields["state"])

        self.breaker = CircuitBreaker(
            "peer",
            reset=reset,
            clock=self.clock,
            emit=emit,
            mode=mode,  # type: ignore[arg-type]
            failures=failures,
            window=window,
            min_calls=min_calls,
            failure_rate=failure_rate,
        )
        self.model = Model(mode, failures, window, min_calls, failure_rate, reset)
        self.outstanding: list[str] = []  # admissions whose result has not come back yet

    @rule()
    def admit(self) -> None:
        admission = self.breaker.admit()
        assert admission == self.model.admit(self.clock.now)
        if admission != "reject":
            self.outstanding.append(admission)

    @precondition(lambda self: self.outstanding)
    @rule(data=st.data(), result=st.sampled_from(["success", "failure", "release"]))
    def finish(self, data: st.DataObject, result: str) -> None:
        # Any outstanding attempt may finish, so results of attempts admitted before the breaker
        # moved (stale ones) come back too.
        admission = self.outstanding.pop(data.draw(st.integers(0, len(self.outstanding) - 1)))
        now = self.clock.now
        if result == "success":
            self.breaker.record_success(admission)  # type: ignore[arg-type]
            self.model.success(admission, now)
        elif result == "failure":
            self.breaker.record_failure(admission)  # type: ignore[arg-type]
            self.model.failure(admission, now)
        else:
            self.breaker.release(admission)  # type: ignore[arg-type]
            self.model.release(admission)

    @rule(
        seconds=st.one_of(
            st.floats(0.0, 0.3),  # within a bucket, usually
            st.sampled_from([0.1, 0.25, 1.0]),  # whole buckets of the windows above
            st.floats(0.5, 25.0),  # past a reset, a window, or several
        )
    )
    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def agrees_with_the_model(self) -> None:
        if not hasattr(self, "model"):
            return
        breaker, model = self.breaker, self.model
        assert breaker.state == model.state
        assert breaker.consecutive_failures == model.consecutive
        assert self.events == model.transitions
        window = model.counted()
        assert (breaker.window_calls, round(breaker.failure_rate, 9)) == (
            len(window),
            round(sum(window) / len(window), 9) if window else 0.0,
        )
        assert self.outstanding.count("probe") <= 1  # one probe at a time
        assert 0.0 <= breaker.remaining_open <= model.reset


BreakerMatchesItsModel.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
test_the_breaker_matches_its_model = BreakerMatchesItsModel.TestCase
