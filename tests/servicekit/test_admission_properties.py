"""Invariants of the limiter for any sequence of arrivals, completions, departures and loop lateness.

The example-based tests pin each rule of the adaptive limit; these drive the slots, the queue and
the limit together through random histories (a fake clock, the loop late or on time, clients that
leave while queued or just as they are served, permits given back twice) and check what must hold whatever the limit does:
no slot leaks or is counted twice, nobody is admitted past the limit or ahead of the queue, a
queued request never waits behind a free slot nor past its deadline, and the door's question
changes nothing.
"""

from __future__ import annotations

import asyncio

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from servicekit.admission import AdmissionPolicy, Limiter, Permit, Shed
from servicekit.admission.testing import FakeClock

_LATE = (0.0, 0.0, 0.005, 0.05, 0.3)  # how late the loop runs its timers: mostly on time, sometimes swamped
_QUEUE_TIMEOUT = 0.25  # longer than an update interval: a queue that outlives an update of the limit


class _Queued:
    def __init__(self, future: asyncio.Future[Permit], at: float, task: asyncio.Task[Permit]) -> None:
        self.future, self.at, self.task = future, at, task


class LimiterMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        # Probes every 2 s, without jitter: re-measuring after a baseline is reached, and replays are exact.
        self.policy = AdmissionPolicy(
            initial_limit=8,
            min_limit=2,
            max_limit=20,
            probe_samples=3,
            probe_interval=2.0,
            probe_jitter=0.0,
            queue_timeout=_QUEUE_TIMEOUT,
        )
        self.limiter = Limiter(self.policy, clock=self.clock)
        self.held: list[Permit] = []  # permits out, not yet given back
        self.queued: list[_Queued] = []  # in the order they queued

    def teardown(self) -> None:
        for place in self.queued:
            place.task.cancel()
        self.loop.run_until_complete(asyncio.sleep(0))
        self.limiter.close()
        self.loop.close()

    def _waiting(self) -> list[_Queued]:
        """The queued requests the limiter has not yet answered, in the order they queued."""
        return [place for place in self.queued if not place.future.done()]

    def _spin(self) -> None:
        """Let the loop run what the limiter scheduled (future callbacks), then collect what queued requests got."""
        self.loop.run_until_complete(asyncio.sleep(0))
        still: list[_Queued] = []
        for position, place in enumerate(self.queued):
            client = place.task
            if not client.done():
                still.append(place)
            elif not client.cancelled():
                if client.exception() is None:
                    # FIFO: nobody who queued earlier and is still waiting was passed over.
                    assert all(earlier.future.done() for earlier in self.queued[:position])
                    self.held.append(client.result())
                else:
                    error = client.exception()
                    assert isinstance(error, Shed) and error.reason == "queue_timeout"
                    # Not before its deadline.
                    assert self.clock.monotonic() >= place.at + _QUEUE_TIMEOUT - 1e-9
        self.queued = still

    @rule()
    def arrive(self) -> None:
        """A request asks for a slot, and queues (or is refused) if it gets none."""
        permit = self.limiter.try_acquire()
        if permit is not None:
            # Only into a free slot (the limit may have grown on the clock as it asked), and never
            # ahead of anyone still queued: they were served first.
            assert self.limiter.in_flight <= self.limiter.limit
            assert not self._waiting()
            self.held.append(permit)
            self._spin()
            return

        async def place() -> asyncio.Future[Permit] | None:
            try:
                return self.limiter.enqueue()
            except Shed as shed:
                assert shed.reason == "queue_full"
                return None

        future = self.loop.run_until_complete(place())
        if future is not None:
            self.queued.append(_Queued(future, self.clock.monotonic(), self.loop.create_task(self.limiter.wait(future))))
        self._spin()

    @rule(count=st.integers(2, 40))
    def burst(self, count: int) -> None:
        """Many requests at once: enough to fill any limit this policy allows."""
        for _ in range(count):
            self.arrive()

    @rule(completed=st.booleans())
    def all_finish(self, completed: bool) -> None:
        """Every request in flight ends at once (a batch of replies)."""
        while self.held:
            self.held.pop(0).release(completed=completed)
            self._spin()

    @rule(latency=st.sampled_from([0.0, 0.002, 0.02, 0.2]), late_by=st.sampled_from(_LATE), more=st.integers(0, 5))
    def a_round_of_overload(self, latency: float, late_by: float, more: int) -> None:
        """The limit filled and `more` asking on top, everything finishing `latency` later: the
        rhythm that moves the limit (updates, probes, cuts and growth)."""
        self.clock.late_by = late_by
        for _ in range(max(self.limiter.limit - self.limiter.in_flight, 0) + more):
            self.arrive()
        self.clock.advance(latency)
        self._spin()
        self.all_finish(completed=True)

    @rule()
    def door(self) -> None:
        """The server's protocol asks whether to refuse at the door, and refuses if so."""
        before = (self.limiter.in_flight, self.limiter.queued, self.limiter.limit)
        sheds = self.limiter.would_shed()
        assert (self.limiter.in_flight, self.limiter.queued, self.limiter.limit) == before  # asking changes nothing
        if sheds:
            self.limiter.refused_at_door()
            self._spin()

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data(), completed=st.booleans(), twice=st.booleans())
    def finish(self, data: st.DataObject, completed: bool, twice: bool) -> None:
        """A request ends (ran to its end, or failed or was cut short); some give their slot back twice."""
        permit = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        permit.release(completed=completed)
        if twice:
            permit.release(completed=completed)
        self._spin()

    @precondition(lambda self: bool(self._waiting()))
    @rule(data=st.data())
    def leave(self, data: st.DataObject) -> None:
        """A queued client goes away (its task is cancelled)."""
        waiting = self._waiting()
        waiting[data.draw(st.integers(0, len(waiting) - 1))].task.cancel()
        self._spin()

    @precondition(lambda self: bool(self.held) and bool(self._waiting()))
    @rule(completed=st.booleans())
    def leaves_as_served(self, completed: bool) -> None:
        """A slot frees and the head of the queue gets it, but its client left meanwhile: `wait` gives it back."""
        head = self._waiting()[0]
        self.held.pop(0).release(completed=completed)
        head.task.cancel()
        self._spin()

    @rule(rounds=st.integers(2, 6), latency=st.sampled_from([0.002, 0.02, 0.2]), late_by=st.sampled_from(_LATE[2:]))
    def sustained_overload(self, rounds: int, latency: float, late_by: float) -> None:
        """Overload that lasts: consecutive congested updates (cuts down to the floor, a stuck limit re-probed)."""
        for _ in range(rounds):
            self.a_round_of_overload(latency, late_by, 2)

    @rule(seconds=st.sampled_from([0.001, 0.01, 0.05, 0.1, 0.3, 1.0, 2.5]), late_by=st.sampled_from(_LATE))
    def time_passes(self, seconds: float, late_by: float) -> None:
        self.clock.late_by = late_by
        self.clock.advance(seconds)
        self._spin()

    @invariant()
    def every_slot_is_accounted_for(self) -> None:
        assert self.limiter.in_flight == len(self.held)

    @invariant()
    def the_limit_stays_within_its_bounds(self) -> None:
        assert self.policy.min_limit <= self.limiter.limit <= self.policy.max_limit

    @invariant()
    def nobody_waits_behind_a_free_slot(self) -> None:
        if self._waiting():
            assert self.limiter.in_flight >= self.limiter.limit

    @invariant()
    def nobody_waits_past_the_deadline(self) -> None:
        now = self.clock.monotonic()
        for place in self._waiting():
            # Its expiry timer fires as late as the loop ran when it was armed, at worst.
            assert now - place.at <= _QUEUE_TIMEOUT + max(_LATE) + 1e-9


LimiterMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=60, deadline=None)
test_the_limiter_keeps_its_invariants = LimiterMachine.TestCase


def test_a_drained_limiter_ends_empty() -> None:
    """After any history, giving every slot back and letting the deadlines pass leaves nothing behind."""
    machine = LimiterMachine()
    try:
        for step in range(200):
            [machine.arrive, machine.arrive, machine.door][step % 3]()
            if step % 7 == 0 and machine.held:
                machine.held.pop(0).release(completed=True)
            machine.time_passes(0.01, 0.0)
        for permit in machine.held:
            permit.release(completed=True)
        machine.held.clear()
        machine.time_passes(1.0, 0.0)
        assert machine.limiter.in_flight == len(machine.held)
        for permit in machine.held:
            permit.release(completed=True)
        machine.held.clear()
        machine.time_passes(1.0, 0.0)
        assert machine.limiter.in_flight == 0 and machine.limiter.queued == 0 and not machine.queued
    finally:
        machine.teardown()
