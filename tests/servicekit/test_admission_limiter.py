"""The adaptive limiter, on a fake clock: it admits, queues, sheds and adapts as documented."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from servicekit.admission import AdmissionPolicy, Limiter, Permit, Shed
from servicekit.admission._gradient import GradientLimit
from servicekit.admission._limiter import SWAMPED_READ_LAG
from servicekit.admission.testing import FakeClock


def limiter(clock: FakeClock, **policy: object) -> Limiter:
    return Limiter(AdmissionPolicy(**policy), clock=clock)  # type: ignore[arg-type]


def run_batch(lim: Limiter, clock: FakeClock, count: int, latency: float, *, more_waiting: bool = True) -> None:
    """`count` requests admitted together, all finishing `latency` later.

    `more_waiting`: a batch that fills the limit also meets one more request that finds no slot,
    as under overload; without it the batch is all the demand there is.
    """
    permits = [lim.try_acquire() for _ in range(count)]
    assert all(permits), "the batch must fit the limit"
    if more_waiting and lim.in_flight >= lim.limit:
        assert lim.try_acquire() is None  # the limit holds back demand
    clock.advance(latency)
    for permit in permits:
        assert permit is not None
        permit.release(completed=True)


def congest(lim: Limiter, clock: FakeClock) -> None:
    """From now on the loop runs its timers 10 ms late, and the lag monitor has seen it."""
    clock.late_by = 0.01
    lim.try_acquire().release(completed=False)  # type: ignore[union-attr]  # starts the lag monitor
    clock.advance(0.1)


def probe(lim: Limiter, clock: FakeClock, latency: float) -> None:
    """Get through the first probe: a congested update a second in, then uncrowded samples."""
    late_by = clock.late_by
    congest(lim, clock)
    clock.advance(1.0)
    run_batch(lim, clock, lim.limit, latency)  # an update that sees the limit reached and the loop late
    lim.try_acquire().release(completed=False)  # type: ignore[union-attr]  # admitting ticks the probe in
    assert lim._gradient.probing
    while lim._gradient.probing:
        run_batch(lim, clock, 1, latency)
    clock.late_by = late_by


def test_admits_up_to_the_initial_limit_then_refuses_without_a_queue():
    clock = FakeClock()
    lim = limiter(clock, initial_limit=5, queue_timeout=0)
    permits = [lim.try_acquire() for _ in range(5)]
    assert all(permits) and lim.in_flight == 5
    assert lim.try_acquire() is None
    permits[0].release(completed=True)  # type: ignore[union-attr]
    permits[0].release(completed=True)  # type: ignore[union-attr]  # twice: still one slot
    assert lim.in_flight == 4


async def test_a_full_limiter_without_queue_sheds_at_once():
    lim = limiter(FakeClock(), initial_limit=1, min_limit=1, queue_timeout=0)
    assert lim.try_acquire() is not None
    with pytest.raises(Shed) as shed:
        await lim.acquire()
    assert shed.value.reason == "queue_full"


async def test_a_queued_request_gets_the_next_free_slot_in_order():
    clock = FakeClock()
    lim = limiter(clock, initial_limit=1, min_limit=1)
    first = await lim.acquire()
    waiters = [asyncio.create_task(lim.acquire()) for _ in range(2)]
    await asyncio.sleep(0)
    assert lim.queued == 2 and not any(w.done() for w in waiters)
    first.release(completed=True)
    await asyncio.sleep(0)
    assert waiters[0].done() and not waiters[1].done()
    assert lim.in_flight == 1  # the slot was handed over, never free
    waiters[0].result().release(completed=True)
    (await waiters[1]).release(completed=True)
    assert lim.in_flight == 0 and lim.queued == 0


async def test_a_queued_request_is_shed_at_its_deadline():
    clock = FakeClock()
    lim = limiter(clock, initial_limit=1, min_limit=1, queue_timeout=0.1)
    held = await lim.acquire()
    early = asyncio.create_task(lim.acquire())
    await asyncio.sleep(0)
    clock.advance(0.05)
    late = asyncio.create_task(lim.acquire())
    await asyncio.sleep(0)
    clock.advance(0.06)  # past the first deadline only
    await asyncio.sleep(0)
    with pytest.raises(Shed) as shed:
        await early
    assert shed.value.reason == "queue_timeout"
    assert not late.done()
    held.release(completed=True)
    (await late).release(completed=True)
    assert lim.in_flight == 0


async def test_the_queue_refuses_at_once_when_the_wait_would_pass_half_the_deadline():
    clock = FakeClock()
    lim = limiter(clock, initial_limit=2, min_limit=1, queue_timeout=0.1)
    run_batch(lim, clock, 2, 0.04)  # service time 40 ms at a limit of 2: 20 ms per place in line
    held = [await lim.acquire() for _ in range(2)]
    queued = [asyncio.create_task(lim.acquire()) for _ in range(2)]  # 2 places * 20 ms = 40 ms <= 50 ms
    await asyncio.sleep(0)
    assert lim.queued == 2
    with pytest.raises(Shed) as shed:
        await lim.acquire()  # a 3rd would wait ~60 ms: more than half the deadline
    assert shed.value.reason == "queue_full"
    for task in queued:
        task.cancel()
    for permit in held:
        permit.release(completed=False)
    await asyncio.gather(*queued, return_exceptions=True)
    assert lim.in_flight == 0


async def test_would_shed_says_what_acquire_would_do_and_changes_nothing():
    clock = FakeClock()
    lim = limiter(clock, initial_limit=2, min_limit=1, queue_timeout=0.1)
    assert not lim.would_shed() and not lim.loop_lag.running  # asking starts nothing
    run_batch(lim, clock, 2, 0.04)  # 20 ms per place in line: two places fit half the deadline
    held = [await lim.acquire() for _ in range(2)]
    assert not lim.would_shed()  # full, but the queue is worth joining
    queued = [asyncio.create_task(lim.acquire()) for _ in range(2)]
    await asyncio.sleep(0)
    state = (lim.in_flight, lim.queued, lim.limit)
    assert lim.would_shed() and lim.would_shed()
    assert (lim.in_flight, lim.queued, lim.limit) == state  # no slot taken, no place in line
    with pytest.raises(Shed):
        await lim.acquire()  # and acquire agrees
    held[0].release(completed=False)  # the head of the queue gets the slot: still full
    await asyncio.sleep(0)
    assert lim.in_flight == 2 and lim.queued == 1 and not lim.would_shed()  # one place ahead: worth it
    for task in queued:
        task.cancel()
    await asyncio.gather(*queued, return_exceptions=True)
    for permit in [held[1], *(task.result() for task in queued if not task.cancelled())]:
        permit.release(completed=False)
    assert lim.in_flight == 0 and not lim.would_shed()


async def test_without_a_queue_would_shed_is_exactly_a_full_limit():
    lim = limiter(FakeClock(), initial_limit=1, min_limit=1, queue_timeout=0)
    assert not lim.would_shed()
    permit = lim.try_acquire()
    assert permit is not None and lim.would_shed()
    permit.release(completed=True)
    assert not lim.would_shed()


async def test_would_shed_counts_requests_let_through_that_have_not_asked_yet_as_ahead_of_this_one():
    clock = FakeClock()
    lim = limiter(clock, initial_limit=3, min_limit=1, queue_timeout=0)
    held = lim.try_acquire()
    assert held is not None
    assert not lim.would_shed(ahead=1)  # one slot of the three left for this one
    assert lim.would_shed(ahead=2)
    queueing = limiter(clock, initial_limit=2, min_limit=1, queue_timeout=0.1)
    run_batch(queueing, clock, 2, 0.04)  # 20 ms per place in line: two places fit half the deadline
    assert not queueing.would_shed(ahead=3)  # full once they take theirs, then the second place in line
    assert queueing.would_shed(ahead=4)  # the third: past half the deadline
    held.release(completed=False)


def _ask(lim: Limiter) -> tuple[str, object]:
    """One request as the middleware makes it: a slot, else a place in the queue, else shed."""
    permit = lim.try_acquire()
    if permit is not None:
        return "slot", permit
    try:
        return "queued", lim.enqueue()
    except Shed:
        return "shed", None


@pytest.mark.parametrize("state", ["free slots", "queued", "limit cut below what runs"])
async def test_would_shed_with_others_ahead_says_what_their_requests_then_meet(state):
    clock = FakeClock()
    lim = limiter(clock, initial_limit=4, min_limit=1, queue_timeout=0.1)
    run_batch(lim, clock, 4, 0.04)  # a measured service time: a few places in line fit the deadline
    asked = [_ask(lim) for _ in range({"free slots": 2, "queued": lim.limit + 2, "limit cut below what runs": lim.limit}[state])]
    if state == "limit cut below what runs":
        assert lim.in_flight == lim.limit == 4 and lim.queued == 0
        lim._gradient._limit = 2.0  # as under overload: no slot frees until three have finished
    predicted = [lim.would_shed(ahead=k) for k in range(12)]
    asked += [_ask(lim) for _ in range(12)]
    assert predicted == [outcome == "shed" for outcome, _ in asked[-12:]]
    assert predicted[0] is False and predicted[-1] is True  # both answers occur in every state
    for outcome, held in asked:
        if outcome == "slot":
            held.release(completed=False)
        elif outcome == "queued":
            held.cancel()


async def test_a_request_that_leaves_the_queue_frees_its_place_and_a_handed_slot_is_not_lost():
    clock = FakeClock()
    lim = limiter(clock, initial_limit=1, min_limit=1)
    held = await lim.acquire()
    leaving = asyncio.create_task(lim.acquire())
    staying = asyncio.create_task(lim.acquire())
    await asyncio.sleep(0)
    held.release(completed=True)  # the slot goes to `leaving`...
    leaving.cancel()  # ...which is cancelled before it could run
    with pytest.raises(asyncio.CancelledError):
        await leaving
    permit = await staying
    assert isinstance(permit, Permit) and lim.in_flight == 1
    permit.release(completed=True)
    assert lim.in_flight == 0


def test_the_first_congestion_probes_the_latency_without_load_and_fits_the_limit():
    clock = FakeClock()
    lim = limiter(clock, initial_limit=20, min_limit=3, probe_samples=5)
    congest(lim, clock)
    run_batch(lim, clock, 20, 0.05)
    clock.advance(0.1)
    run_batch(lim, clock, 20, 0.05)
    assert lim.limit == 20 and lim.min_latency is None  # the first second: no probe yet
    clock.advance(1.0)
    lim.try_acquire().release(completed=False)  # type: ignore[union-attr]
    assert lim.limit == 3  # probing: only the floor may run
    for _ in range(5):
        run_batch(lim, clock, 1, 0.002)
    assert lim.min_latency == pytest.approx(0.002)
    # 20 in flight took 25x the no-load latency; the ~130 a second served need one at 3 ms: the floor
    assert lim.limit == 3


def burst_then_probe(initial_limit: int, no_load_latency: float) -> GradientLimit:
    """A second of a burst that keeps `initial_limit` in flight and finishes 2,000 a second, then a probe."""
    clock = FakeClock()
    gradient = GradientLimit(AdmissionPolicy(initial_limit=initial_limit, probe_samples=1), clock.monotonic())
    for _ in range(11):  # an update every 0.1 s, each over 200 completions
        gradient.held_back()  # and more wanted in
        for _ in range(200):
            gradient.observe(0.05, initial_limit, uncrowded=False, now=clock.monotonic())
        clock.advance(0.1)
    gradient.tick(clock.monotonic(), 0)  # limit reached, loop late (no lag source: always late): congested
    assert gradient.probing
    clock.advance(no_load_latency)
    gradient.observe(no_load_latency, 1, uncrowded=True, now=clock.monotonic())
    assert not gradient.probing and gradient.min_latency == pytest.approx(no_load_latency)
    return gradient


def test_a_probe_fits_an_unmeasured_limit_to_the_rate_served_at_the_target_latency():
    # Little's law: 2,000 a second at 15 ms (10 ms no-load, 50% tolerance) is 30 in flight, plus
    # sqrt(30) headroom. Resuming at 100 would hand a swamped loop 100 again, halved per update.
    assert burst_then_probe(100, 0.01).limit == 35


def test_a_late_loop_holds_an_unmeasured_limit_until_it_is_reached_then_probes():
    # A burst the loop reads too slowly to reach the initial limit: 60 of 100 in flight, the
    # loop 30 ms late. Growing (the limit is half used, not reached) admitted ever more.
    clock = FakeClock()
    lim = limiter(clock, initial_limit=100, min_limit=3, probe_samples=5)
    congest(lim, clock)
    clock.late_by = 0.03
    clock.advance(0.1)  # the lag monitor's timers now fire 30 ms late
    for _ in range(15):  # past the first second too
        run_batch(lim, clock, 60, 0.05)
        clock.advance(0.1)
    assert lim.limit == 100 and not lim._gradient.probing, "held, not grown"
    run_batch(lim, clock, 100, 0.05)  # reached and late: congested
    lim.try_acquire().release(completed=False)  # type: ignore[union-attr]  # the next admission ticks the probe in
    assert lim._gradient.probing and lim.limit == 3
    for _ in range(5):
        run_batch(lim, clock, 1, 0.005)
    assert lim.min_latency == pytest.approx(0.005)
    assert lim.limit < 100, "fitted to what was served"


def test_one_late_reading_does_not_pin_a_service_waiting_on_a_slow_model():
    # 60 chats waiting 3 s each on the model, the loop on time but for one 25 ms hiccup (a GC, a
    # neighbour) in the first window: no probe (it would hold the limit at 3 for two model latencies).
    clock = FakeClock()
    lim = limiter(clock, initial_limit=100, min_limit=3, probe_samples=5)
    lim.try_acquire().release(completed=False)  # type: ignore[union-attr]  # starts the lag monitor
    clock.advance(1.2)
    clock.late_by = 0.025
    run_batch(lim, clock, 60, 3.0)
    clock.late_by = 0.0
    for _ in range(5):
        run_batch(lim, clock, 60, 3.0)
        assert not lim._gradient.probing
    assert lim.limit >= 100


def test_a_late_loop_with_a_baseline_still_grows_a_limit_in_use_below_it():
    clock = FakeClock()
    lim = limiter(clock, initial_limit=20, min_limit=3, probe_samples=5)
    probe(lim, clock, 0.002)
    congest(lim, clock)
    clock.late_by = 0.03
    clock.advance(0.1)  # the lag monitor's timers now fire 30 ms late
    before = lim.limit
    for _ in range(5):  # 15 of 20 in flight, the loop late: a baseline exists, so no probe
        run_batch(lim, clock, 15, 0.002)
        clock.advance(0.1)
    assert not lim._gradient.probing and lim.limit > before


def test_a_probe_never_raises_a_limit_by_its_fit():
    assert burst_then_probe(10, 0.01).limit == 10


def test_queueing_lowers_the_limit_and_its_absence_raises_it():
    clock = FakeClock()
    lim = limiter(clock, initial_limit=40, min_limit=3, probe_samples=5, max_limit=200)
    probe(lim, clock, 0.002)
    congest(lim, clock)  # the loop runs its timers late: this process is queueing for the CPU
    for _ in range(5):  # 40 in flight at 4x the no-load latency: queueing
        run_batch(lim, clock, min(lim.limit, 40), 0.008)
        clock.advance(0.1)
    shrunk = lim.limit
    assert shrunk < 40
    clock.late_by = 0.0
    for _ in range(10):  # at no-load latency and using the whole limit: room to grow
        run_batch(lim, clock, lim.limit, 0.002)
        clock.advance(0.1)
    assert lim.limit > shrunk * 2
    assert lim.limit <= 200


def test_an_idle_service_does_not_grow_its_limit():
    clock = FakeClock()
    lim = limiter(clock, initial_limit=20, probe_samples=5)
    probe(lim, clock, 0.002)
    for _ in range(20):  # 2 at a time, fast: far below half the limit
        run_batch(lim, clock, 2, 0.002)
        clock.advance(0.1)
    assert lim.limit == 20


def test_no_probe_pins_the_limit_while_the_loop_is_on_time():
    clock = FakeClock()
    lim = limiter(clock, initial_limit=20, min_limit=3, max_limit=20)
    for _ in range(30):  # 3 s of a slow dependency, no queueing here
        run_batch(lim, clock, 20, 0.3)
    assert not lim._gradient.probing and lim.limit == 20


def test_a_slower_dependency_without_queueing_here_does_not_lower_the_limit():
    clock = FakeClock()
    lim = limiter(clock, initial_limit=10, min_limit=3, probe_samples=5, max_limit=100)
    probe(lim, clock, 0.002)
    for _ in range(10):  # the model now takes 100x longer, but the loop runs on time
        run_batch(lim, clock, lim.limit, 0.2)
        clock.advance(0.1)
    assert lim.limit > 10  # in use and not queueing: room to grow, not a reason to shed


def test_a_late_loop_does_not_cut_a_limit_that_is_not_reached():
    clock = FakeClock()
    lim = limiter(clock, initial_limit=20, min_limit=3, probe_samples=5)
    probe(lim, clock, 0.002)
    congest(lim, clock)  # another process takes the CPU, or code runs cold
    for _ in range(20):  # 6 at a time, 25x slower: the limit of 20 is not what holds anyone back
        run_batch(lim, clock, 6, 0.05)
        clock.advance(0.1)
    assert lim.limit == 20 and not lim._gradient.probing


# The dependency became 50x slower, or slower than a probe's second (1.5 s): no limit brings
# latency back. The probe waits for its samples however long they take; given up after its
# second, a model that slow was never measured and the limit stayed at the floor.
@pytest.mark.parametrize("latency", [0.1, 1.5])
def test_a_limit_stuck_at_the_floor_measures_the_latency_without_load_again(latency):
    clock = FakeClock()
    lim = limiter(clock, initial_limit=10, min_limit=3, probe_samples=5)
    probe(lim, clock, 0.002)
    congest(lim, clock)
    for _ in range(60):
        run_batch(lim, clock, lim.limit, latency)
        clock.advance(0.1)
        if lim._gradient.probing:
            break
    assert lim._gradient.probing
    for _ in range(5):
        run_batch(lim, clock, 1, latency)
    assert lim.min_latency == pytest.approx(latency)  # the new normal


def test_probes_recur_at_the_interval_with_jitter():
    clock = FakeClock()
    gradient = GradientLimit(AdmissionPolicy(probe_interval=60, probe_jitter=0.15, probe_samples=1), clock.monotonic())
    clock.advance(1.0)
    gradient.held_back()
    gradient.observe(0.01, 100, uncrowded=False, now=clock.monotonic())  # an update at the limit; no lag source: late
    gradient.tick(clock.monotonic(), 0)
    clock.advance(0.01)
    gradient.observe(0.01, 1, uncrowded=True, now=clock.monotonic())
    assert not gradient.probing
    clock.advance(60 * 0.85 - 0.01)
    gradient.held_back()
    gradient.observe(0.01, 100, uncrowded=False, now=clock.monotonic())  # still at the limit, late
    gradient.tick(clock.monotonic(), 0)
    assert not gradient.probing
    clock.advance(60 * 0.31)  # past the latest jitter (1.15) with a margin: the probe ended 0.01 s in
    gradient.held_back()
    gradient.observe(0.01, 100, uncrowded=False, now=clock.monotonic())
    gradient.tick(clock.monotonic(), 0)
    assert gradient.probing


def test_crowded_requests_do_not_count_as_latency_without_load():
    clock = FakeClock()
    gradient = GradientLimit(AdmissionPolicy(probe_samples=2, probe_max_seconds=5), clock.monotonic())
    clock.advance(1.0)
    gradient.held_back()
    gradient.observe(0.01, 100, uncrowded=False, now=clock.monotonic())
    gradient.tick(clock.monotonic(), 0)
    clock.advance(0.5)
    gradient.observe(0.5, 10, uncrowded=False, now=clock.monotonic())  # admitted crowded
    gradient.observe(0.6, 3, uncrowded=True, now=clock.monotonic())  # admitted alone, before the probe: others came after
    assert gradient.probing and gradient.min_latency is None
    clock.advance(0.01)
    gradient.observe(0.01, 1, uncrowded=True, now=clock.monotonic())
    gradient.observe(0.01, 1, uncrowded=True, now=clock.monotonic())
    assert gradient.min_latency == pytest.approx(0.01)


def test_a_probe_that_cannot_fill_ends_after_its_time_with_what_it_has():
    clock = FakeClock()
    gradient = GradientLimit(AdmissionPolicy(probe_samples=20, probe_max_seconds=1.0), clock.monotonic())
    clock.advance(1.0)
    gradient.held_back()
    gradient.observe(0.01, 100, uncrowded=False, now=clock.monotonic())
    gradient.tick(clock.monotonic(), 0)
    gradient.observe(0.3, 1, uncrowded=True, now=clock.monotonic())
    assert gradient.probing
    clock.advance(1.0)
    gradient.observe(0.4, 1, uncrowded=True, now=clock.monotonic())
    assert not gradient.probing and gradient.min_latency == pytest.approx(0.4)


@pytest.mark.parametrize(
    "bad",
    [
        {"min_limit": 0},
        {"min_limit": 5, "initial_limit": 4},
        {"initial_limit": 600},
        {"latency_tolerance": -1},
        {"latency_allowance": -0.01},
        {"congested_lag": -0.001},
        {"probe_jitter": 1.0},
        {"update_interval": 0},
        {"probe_samples": 0},
        {"queue_timeout": -0.1},
    ],
)
def test_a_nonsensical_policy_is_refused(bad):
    with pytest.raises(ValueError):
        AdmissionPolicy(**bad)


def settle(lim: Limiter, clock: FakeClock, latency: float, rounds: int = 10) -> int:
    """`rounds` updates with the whole limit in use, every request taking `latency`; the limit after."""
    for _ in range(rounds):
        run_batch(lim, clock, lim.limit, latency)
        clock.advance(0.1)
    return lim.limit


def test_queueing_within_the_latency_allowance_does_not_lower_the_limit():
    # No-load latency 2 ms; 30 in flight on a late loop take 15 ms each: 13 ms of queueing for the
    # CPU, the price of running 30 at once in one process, and within a 20 ms allowance (the 50%
    # tolerance alone reads it as queueing and cuts: below). So the limit holds.
    clock = FakeClock()
    lim = limiter(clock, initial_limit=30, min_limit=3, probe_samples=5, latency_allowance=0.02)
    probe(lim, clock, 0.002)
    congest(lim, clock)
    assert settle(lim, clock, 0.015) >= 30
    assert settle(lim, clock, 0.060) < 15  # queueing past it still cuts


def test_without_an_allowance_the_same_queueing_lowers_the_limit():
    # The library's default: a service whose requests run whole pays for an allowance in slower
    # refusals. Chat, whose work comes in slices, sets 20 ms (docs/overload.md, stop 27).
    assert AdmissionPolicy().latency_allowance == 0
    clock = FakeClock()
    lim = limiter(clock, initial_limit=30, min_limit=3, probe_samples=5)
    probe(lim, clock, 0.002)
    congest(lim, clock)
    assert settle(lim, clock, 0.015) < 15


def test_a_swamped_loop_holds_the_limit_at_what_is_in_flight_so_the_excess_is_refused():
    # A burst the loop cannot even read: timers run 150 ms late, 40 run of a limit of 100.
    # Growing it (40 is more than half) admitted everything read, and nothing was refused.
    clock = FakeClock()
    lim = limiter(clock, initial_limit=100, min_limit=3, probe_samples=5, queue_timeout=0)
    clock.late_by = 0.15
    lim.try_acquire().release(completed=False)  # type: ignore[union-attr]  # starts the lag monitor
    clock.advance(1.2)
    run_batch(lim, clock, 40, 0.5)
    clock.advance(0.1)
    run_batch(lim, clock, 40, 0.5)
    assert lim.limit <= 40  # held at what ran, then reached while late: a probe takes over
    held = [permit for permit in (lim.try_acquire() for _ in range(41)) if permit is not None]
    assert len(held) <= 40 and lim.would_shed()  # the excess is refused at the door
    for permit in held:
        permit.release(completed=False)


async def test_what_a_loop_reads_this_late_is_refused_until_a_timer_runs_on_time_again():
    # After a stall the loop reads requests that waited seconds in the kernel, most from clients
    # about to give up: each one admitted was a run cancelled when its client left.
    clock = FakeClock()
    lim = limiter(clock, initial_limit=10, min_limit=1, queue_timeout=0.1)
    held = lim.try_acquire()  # starts the lag monitor, its first timer due on time

    def next_timer_late_by(seconds: float) -> None:
        pending = clock.late_by  # how late the timer already set will fire
        clock.late_by = seconds
        clock.advance(0.025 + pending)  # it fires, and sets the next one...
        clock.advance(0.025 + seconds)  # ...which fires this late

    assert held is not None
    next_timer_late_by(SWAMPED_READ_LAG * 1.1)
    assert lim.in_flight == 1 and lim.limit == 10
    assert lim.would_shed() and lim.try_acquire() is None
    with pytest.raises(Shed):
        lim.enqueue()  # not queued either
    next_timer_late_by(SWAMPED_READ_LAG * 0.9)  # late, not that late: a busy loop is served
    assert not lim.would_shed()
    next_timer_late_by(0.0)
    permit = lim.try_acquire()
    assert permit is not None and not lim.would_shed()
    for taken in (held, permit):
        taken.release(completed=False)


@pytest.mark.parametrize(
    ("late_by", "grows"),
    [
        # 5 ms late: grown on a loop 2-20 ms late, a 3x burst's first half-second took 170-440 ms
        # to refuse (docs/overload.md); held, it is refused in ms, and a limit that comes to bind
        # is congested, so a probe measures the baseline.
        (0.005, False),
        # On time (the 60 wait on a model): the limit grows ahead, so demand that keeps rising is
        # not refused while it catches up.
        (0.0, True),
    ],
)
def test_before_a_baseline_a_limit_in_use_grows_only_on_a_loop_that_runs_on_time(late_by, grows):
    clock = FakeClock()
    lim = limiter(clock, initial_limit=100, min_limit=3, probe_samples=5)
    clock.late_by = late_by
    lim.try_acquire().release(completed=False)  # type: ignore[union-attr]
    clock.advance(1.2)
    for _ in range(5):  # 60 of 100 in flight
        run_batch(lim, clock, 60, 0.2)
        clock.advance(0.1)
    assert (lim.limit > 100) == grows and lim.limit >= 100


def test_one_late_window_is_a_hiccup_not_a_swamp():
    # A 150 ms pause once (a GC, a neighbour on a 2-core machine) with 6 clients: holding the limit
    # at what happened to run then refused requests at low load (a chaos run's two 503s).
    clock = FakeClock()
    lim = limiter(clock, initial_limit=20, min_limit=3, probe_samples=5)
    lim.try_acquire().release(completed=False)  # type: ignore[union-attr]  # starts the lag monitor
    clock.advance(1.2)
    clock.late_by = 0.15
    run_batch(lim, clock, 2, 0.05)
    clock.advance(0.1)
    clock.late_by = 0.0
    run_batch(lim, clock, 2, 0.05)
    assert lim.limit >= 20
    held = [permit for permit in (lim.try_acquire() for _ in range(6)) if permit is not None]
    assert len(held) == 6, "six clients are served, none refused"
    for permit in held:
        permit.release(completed=False)


def test_a_limit_all_clients_fill_without_anyone_waiting_is_neither_cut_nor_probed():
    # 32 closed-loop clients at a limit of 32, the loop late (chat at its CPU): all are served.
    # Treating a full limit as binding probed it down to ~11 and refused some of the 32
    # (bench_overload's capacity phase read 320-339 req/s against 396-454 unlimited).
    clock = FakeClock()
    lim = limiter(clock, initial_limit=32, min_limit=3, probe_samples=5)
    congest(lim, clock)
    for _ in range(30):
        run_batch(lim, clock, 32, 0.05, more_waiting=False)
        clock.advance(0.1)
        lim.try_acquire().release(completed=False)  # type: ignore[union-attr]  # admissions tick
    assert lim.limit == 32 and not lim._gradient.probing


def test_refusals_at_the_door_are_demand_the_limit_holds_back():
    clock = FakeClock()
    lim = limiter(clock, initial_limit=32, min_limit=3, probe_samples=5)
    congest(lim, clock)
    clock.advance(1.0)
    run_batch(lim, clock, 32, 0.05, more_waiting=False)
    clock.advance(0.1)
    run_batch(lim, clock, 32, 0.05, more_waiting=False)
    lim.try_acquire().release(completed=False)  # type: ignore[union-attr]
    assert not lim._gradient.probing
    permits = [lim.try_acquire() for _ in range(32)]
    lim.refused_at_door()  # the server refused one more on `would_shed`, without asking for a slot
    clock.advance(0.1)
    for permit in permits:
        permit.release(completed=True)  # type: ignore[union-attr]
    lim.try_acquire().release(completed=False)  # type: ignore[union-attr]
    assert lim._gradient.probing


async def test_before_a_baseline_a_binding_limit_on_an_idle_loop_grows_on_the_clock():
    # 200 chats arrive over 2 s on a model that takes 3 s, the loop on time, through the queue as
    # the middleware takes them. Growing only when a request finished would keep the limit at 32
    # for a whole model latency; on the clock it grows every update while it holds them back,
    # and the queue is served first as it does.
    clock = FakeClock()
    lim = limiter(clock, initial_limit=32, min_limit=3, probe_samples=5)
    places = []
    for _ in range(200):
        permit = lim.try_acquire()
        if permit is None:
            with contextlib.suppress(Shed):  # the queue is full, or its wait too long: refused
                places.append(lim.enqueue())
        clock.advance(0.01)
        await asyncio.sleep(0)
    assert lim.limit >= 100 and lim.in_flight >= 100
    assert not lim._gradient.probing and lim.min_latency is None
    admitted_from_queue = [place for place in places if place.done() and not place.exception()]
    assert len(admitted_from_queue) > 0
    for place in places:
        if not place.done():
            place.cancel()


def test_before_a_baseline_a_limit_refusing_at_the_door_grows_on_the_clock():
    # The same arrivals with no queue, as the server refuses them: at the door, on `would_shed`,
    # without ever asking for a slot.
    clock = FakeClock()
    lim = limiter(clock, initial_limit=32, min_limit=3, probe_samples=5, queue_timeout=0)
    for _ in range(200):
        if lim.would_shed():
            lim.refused_at_door()
        else:
            assert lim.try_acquire() is not None
        clock.advance(0.01)
    assert lim.limit >= 100 and lim.in_flight >= 100


def test_before_a_baseline_a_limit_far_from_full_does_not_grow():
    clock = FakeClock()
    lim = limiter(clock, initial_limit=32, min_limit=3, probe_samples=5)
    for _ in range(30):  # 10 at a time on a loop that runs on time: a third of the limit in use
        run_batch(lim, clock, 10, 0.05)
        clock.advance(0.1)
    assert lim.limit == 32


def test_after_a_baseline_the_clock_does_not_move_the_limit():
    # Once a baseline exists, the gradient compares latencies of finished requests; a window with
    # none says nothing, however long the limit holds demand back.
    clock = FakeClock()
    lim = limiter(clock, initial_limit=20, min_limit=3, probe_samples=5, queue_timeout=0)
    probe(lim, clock, 0.002)
    before = lim.limit
    running = [lim.try_acquire() for _ in range(before)]
    for _ in range(20):
        assert lim.try_acquire() is None
        clock.advance(0.1)
    assert lim.limit == before and all(running)


def test_a_probe_on_a_model_slower_than_its_second_waits_for_its_sample():
    # 32 chats on a 3 s model fill the limit on a late loop: a probe starts. Given up after its
    # second, a model this slow would never be measured and the limit would stay where the loop
    # first ran late; waited for, the baseline comes once the 32 drain and 3 run alone.
    clock = FakeClock()
    lim = limiter(clock, initial_limit=32, min_limit=3, probe_samples=5, queue_timeout=0)
    congest(lim, clock)
    clock.advance(1.0)
    running = [lim.try_acquire() for _ in range(32)]
    for _ in range(3):  # held back on a late loop: congested once a window measured it
        assert lim.try_acquire() is None
        clock.advance(0.1)
    assert lim.try_acquire() is None
    assert lim._gradient.probing and lim.limit == 3
    clock.advance(2.7)  # the 32 finish, 3 s after they started
    for permit in running:
        permit.release(completed=True)  # type: ignore[union-attr]
    assert lim._gradient.probing, "crowded samples are no baseline"
    alone = [lim.try_acquire() for _ in range(3)]
    clock.advance(3.0)
    for permit in alone:
        permit.release(completed=True)  # type: ignore[union-attr]
    clock.advance(1.0)  # past the probe's second: what it has is its baseline
    run_batch(lim, clock, 1, 3.0)
    assert not lim._gradient.probing and lim.min_latency == pytest.approx(3.0)


def test_a_probe_forgets_the_demand_it_held_back():
    # Everything is held back during a probe; the window after it must not read as binding when
    # the clients then fit the limit.
    clock = FakeClock()
    lim = limiter(clock, initial_limit=20, min_limit=3, probe_samples=5)
    congest(lim, clock)
    clock.advance(1.0)
    run_batch(lim, clock, 20, 0.05)
    lim.try_acquire().release(completed=False)  # type: ignore[union-attr]
    assert lim._gradient.probing
    for _ in range(4):
        run_batch(lim, clock, 1, 0.002)
    assert lim.try_acquire() is not None and lim.try_acquire() is not None
    assert lim.try_acquire() is not None and lim.try_acquire() is None  # held back at the floor
    for _ in range(3):
        lim._release(Permit(lim, clock.monotonic() - 0.002, True), completed=False)
    run_batch(lim, clock, 1, 0.002)  # the fifth sample ends the probe
    assert not lim._gradient.probing
    fitted = lim.limit
    for _ in range(10):  # all clients fit, none waits, the loop late: nothing to cut
        run_batch(lim, clock, fitted, 0.02, more_waiting=False)
        clock.advance(0.1)
    assert lim.limit >= fitted


def test_before_a_baseline_a_binding_limit_on_a_late_loop_is_held():
    clock = FakeClock()
    lim = limiter(clock, initial_limit=32, min_limit=3, probe_samples=5, queue_timeout=0)
    clock.late_by = 0.005  # 32 in flight already keep the loop busy: more would only queue for the CPU
    running = [lim.try_acquire() for _ in range(32)]
    for _ in range(9):
        assert lim.try_acquire() is None
        clock.advance(0.1)
    assert lim.limit == 32 and all(running)


def test_a_flood_after_an_idle_spell_is_measured_afresh_before_the_limit_grows():
    # The first update of a flood that follows a quiet minute would read the quiet minute's loop
    # lateness and grow the limit once (32 -> 37) into a loop that is already late.
    clock = FakeClock()
    lim = limiter(clock, initial_limit=32, min_limit=3, probe_samples=5, queue_timeout=0)
    lim.try_acquire().release(completed=False)  # type: ignore[union-attr]  # starts the lag monitor
    clock.advance(60.0)
    clock.late_by = 0.005
    running = [lim.try_acquire() for _ in range(32)]
    lim.refused_at_door()  # at once: the update due since the idle minute runs now
    for _ in range(3):
        assert lim.try_acquire() is None
        clock.advance(0.1)
    assert lim._gradient._limit == 32 and all(running)  # held (and, on a loop this late, probed)


def test_a_slow_model_ramp_goes_on_after_one_late_window():
    # 200 chats on a 3 s model, refused at the door beyond the limit; one update reads the loop
    # late (a GC) and holds the limit, so the next window admits nothing and nothing finishes.
    # It still binds: what is in flight counts, and the limit grows again on the clock.
    clock = FakeClock()
    lim = limiter(clock, initial_limit=32, min_limit=3, probe_samples=5, queue_timeout=0)
    running = [lim.try_acquire() for _ in range(32)]
    for step in range(15):
        clock.late_by = 0.005 if step == 3 else 0.0
        while lim.in_flight < 200 and not lim.would_shed():
            running.append(lim.try_acquire())
        lim.refused_at_door()
        clock.advance(0.1)
    assert lim.limit >= 100 and all(running)


def test_congestion_seen_before_an_idle_spell_does_not_probe_the_next_burst():
    clock = FakeClock()
    lim = limiter(clock, initial_limit=32, min_limit=3, probe_samples=5, queue_timeout=0)
    congest(lim, clock)
    running = [lim.try_acquire() for _ in range(32)]
    lim.refused_at_door()
    clock.advance(0.1)
    lim.refused_at_door()  # an update: limit bound, loop late, congested (no probe in the first second)
    assert lim._gradient._congested and not lim._gradient.probing
    for permit in running:
        permit.release(completed=False)
    clock.late_by = 0.0
    clock.advance(60.0)  # idle, the loop on time
    running = [lim.try_acquire() for _ in range(32)]
    lim.refused_at_door()  # the burst's first refusal: a fresh window, not the old congestion
    assert not lim._gradient.probing and lim.limit == 32


def test_requests_faster_than_the_clock_can_tell_do_not_break_the_limit():
    # A coarse monotonic clock (15.6 ms on Windows before Python 3.13) reads 0 for a fast request.
    # A median of 0 was divided by inside the request's release, before the queue was woken, and a
    # no-load latency of 0 halved the limit at every congested update.
    clock = FakeClock()
    lim = limiter(clock, initial_limit=10, min_limit=3, probe_samples=5, max_limit=50)
    probe(lim, clock, 0.0)
    assert lim.min_latency is not None and lim.min_latency > 0
    congest(lim, clock)
    for _ in range(5):
        run_batch(lim, clock, lim.limit, 0.0)
        clock.advance(0.1)
    assert 3 <= lim.limit <= 50 and lim.in_flight == 0


async def test_a_release_hands_the_slot_on_even_if_the_limit_arithmetic_fails(monkeypatch):
    # The bug above raised inside the release; the next request in line then waited for its deadline.
    clock = FakeClock()
    lim = limiter(clock, initial_limit=1, min_limit=1)
    held = await lim.acquire()
    queued = asyncio.create_task(lim.acquire())
    await asyncio.sleep(0)

    def broken(*_: object, **__: object) -> None:
        raise ArithmeticError("a bug in the limit's arithmetic")

    monkeypatch.setattr(lim._gradient, "observe", broken)
    with pytest.raises(ArithmeticError):
        held.release(completed=True)  # the error is not hidden...
    await asyncio.sleep(0)
    assert queued.done() and lim.in_flight == 1  # ...and the next in line has the slot
    queued.result().release(completed=False)


def test_a_backlog_in_the_kernel_halves_the_limit_each_update_until_reads_are_prompt_again():
    # After a stall the kernel holds thousands of requests read too late to serve: new connections
    # wait behind them for seconds, and what runs takes the CPU that would drain them.
    clock = FakeClock()
    lim = limiter(clock, initial_limit=40, min_limit=3, probe_samples=5, max_limit=200)
    probe(lim, clock, 0.002)
    before = settle(lim, clock, 0.002)
    for _ in range(4):  # a few late reads in an update are a blip, not a backlog
        lim.read_late()
    assert settle(lim, clock, 0.002, rounds=1) >= before
    limits = []
    for _ in range(3):
        for _ in range(5):
            lim.read_late()
        limits.append(settle(lim, clock, 0.002, rounds=1))
    assert limits[0] <= before and limits[1] <= limits[0] // 2 + 1 and limits[2] <= limits[1] // 2 + 1
    assert settle(lim, clock, 0.002) > 2 * limits[-1]  # reads are prompt again: it grows back
