"""The adaptive limit: Envoy's gradient controller, with Netflix's rule for idle periods.

Latency is only a queueing signal relative to the latency without load, so the controller
measures that first: in a *probe*, the limit drops to `min_limit` until `probe_samples`
requests that ran at that concurrency have finished, and their median becomes `min_latency`.
Between probes, every `update_interval` the median latency of the requests that finished is
compared with it:

    gradient  = clamp(min_latency * (1 + tolerance) / median, 0.5, 2.0)
    new_limit = gradient * limit + sqrt(gradient * limit)

so the limit shrinks while queueing shows and grows while it does not. The square-root
headroom keeps enough in flight to notice when more would be fine.

The limit starts at `initial_limit` (32), and no probe runs in the first second. Until the first
probe there is no baseline to compare latency with, so the limit grows only while the loop runs
on time with at least half of it in use (a service waiting on a slow model, its CPU idle), and a
loop that runs late holds it. A limit that holds requests back is updated every
`update_interval` on the clock, not only when a request finishes, so a model that answers in
seconds does not keep the limit where it started for a whole model latency. Throughout, the
limit *binds* only when a request found no free slot: 32 clients filling a limit of 32 are all
served, and cutting it would refuse some of them. The first probe ends by fitting the limit to
what was being served (Little's law): the highest completion rate of the updates before it,
times the target latency, plus the square-root headroom, if that is lower than the limit was. A
burst's first probe would otherwise hand the burst the unmeasured initial limit again, to be
halved update by update while the loop is swamped. Two more additions. The limit does not grow
while fewer than half of it were in use (Netflix's "app-limited" rule): an idle service would
otherwise drift to `max_limit` and admit a whole burst at once. And a limit stuck at `min_limit`
for a second means latency rose for a reason no concurrency cap can fix (a slower model or
dependency), so the no-load latency is probed again instead of shedding against a stale baseline
until the next scheduled probe. Last, a backlog in the kernel (at least 5 requests in an update
that had waited too long to serve, `read_late`) halves the limit at each update it lasts: what
runs would take the CPU the backlog needs, and new connections wait behind it.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable

from ._policy import AdmissionPolicy

_STUCK_UPDATES = 10  # updates at min_limit (1 s at the default interval) before an early probe
_FIRST_PROBE_AFTER = 1.0  # seconds at `initial_limit` before the first probe: a cold start is not pinned at once
# A loop whose timers run this late is swamped: a request waits longer than this to be read, and
# whatever is admitted on top of what runs cannot be served in time (docs/overload.md).
_SWAMPED_LAG = 0.1
# ...in this many updates in a row: one late window is a hiccup (a GC pause, a neighbour's burst on
# a small machine), and holding the limit at what happened to run then refused requests at low load.
_SWAMPED_UPDATES = 2
_CONGESTION_EXPIRES = 2.0  # seconds without an update (none finished, none held back) after which congestion is old news
# A latency the clock could not resolve (a request that finished within one tick: on a coarse
# clock, or a fake one) counts as one tick. A median of 0 was divided by, and the exception escaped
# a request's release before the queue was woken; a no-load latency of 0 halved the limit at
# every congested update.
_CLOCK_RESOLUTION = max(time.get_clock_info("monotonic").resolution, 1e-9)
_RATE_WINDOWS = 10  # updates (1 s at the default interval) whose completion rates the first probe fits the limit to
# Requests read too late to serve, in one update, that show a backlog in the kernel rather than a
# blip (a stall leaves thousands; a steady 3x flood a few in a whole run).
_BACKLOG_READS = 5


class GradientLimit:
    """The arithmetic only: fed with finished requests and the time, it says what the limit is."""

    def __init__(
        self,
        policy: AdmissionPolicy,
        now: float,
        *,
        loop_lag: Callable[[], float] = lambda: math.inf,
        rng: random.Random | None = None,
    ) -> None:
        self._policy = policy
        self._loop_lag = loop_lag
        self._rng = rng or random.Random()
        self._limit = float(policy.initial_limit)
        self.min_latency: float | None = None
        self._window: list[float] = []
        self._window_started = now
        self._busiest = 0
        self._held_back = False  # a request found no free slot this window: the limit, not demand, bounds it
        self._next_update = now + policy.update_interval
        self._rates: deque[float] = deque(maxlen=_RATE_WINDOWS)  # completions per second, per update
        self._stuck = 0
        self.probing = False
        self._probe_started = now
        self._probe: list[float] = []
        self._next_probe = now + _FIRST_PROBE_AFTER
        self._congested = False
        self._late_updates = 0  # consecutive updates whose loop lateness reached _SWAMPED_LAG
        self._late_reads = 0  # requests this window that had waited in the kernel too long to serve

    @property
    def limit(self) -> int:
        return self._policy.min_limit if self.probing else int(self._limit)

    def observe(self, latency: float, in_flight: int, *, uncrowded: bool, now: float) -> None:
        """Record a request that finished at `now` after `latency`.

        `uncrowded`: it was admitted with at most `min_limit` in flight. Only such requests
        admitted during a probe (when nothing more is admitted) ran without load all along.
        """
        measured = max(latency, _CLOCK_RESOLUTION)
        if self.probing:
            if uncrowded and now - latency >= self._probe_started:
                self._probe.append(measured)
            probe_over = now - self._probe_started >= self._policy.probe_max_seconds
            if len(self._probe) >= self._policy.probe_samples or (probe_over and self._probe):
                self._end_probe(now)
            return
        self._window.append(measured)
        self._busiest = max(self._busiest, in_flight)
        if now >= self._next_update:
            self._update(now)

    def held_back(self) -> None:
        """A request found no free slot (it queues, or is refused)."""
        self._held_back = True

    def read_late(self) -> None:
        """A request had waited in the kernel too long to serve: the process is behind on reading."""
        self._late_reads += 1

    def tick(self, now: float, in_flight: int) -> None:
        """Keep time (called as requests ask for a slot, or are refused at the door).

        Before any baseline, run a due update of a window whose limit binds: a slow model finishes
        nothing for seconds, so completions alone would not. Start a due probe (only while the
        limit binds and the loop is late). A probe ends only with a sample, however long a slow
        model takes: giving it up at a deadline left a model slower than that never measured, and
        the limit pinned at the floor or capped where the loop first ran late (a review's simulation).
        """
        self._busiest = max(self._busiest, in_flight)  # held through a window that admitted nothing
        if self.probing:
            return
        if now - self._window_started > _CONGESTION_EXPIRES:
            # An idle spell: the congestion the last update saw is not this demand's, and must not
            # start a probe the moment a burst arrives.
            self._congested = False
        if self.min_latency is None and self._binding() and now >= self._next_update:
            if self._spans_idle(now):
                # Likewise its loop lateness: measure afresh rather than grow on it (a flood after
                # idle grew 32 -> 37).
                self._loop_lag()
                self._new_window(now)
                self._busiest = in_flight
            else:
                self._update(now)
        if self._congested and now >= self._next_probe:
            self._start_probe(now)

    def _binding(self) -> bool:
        # All of the limit in use is not enough: 32 clients at a limit of 32 are all served, and
        # cutting it would refuse some of them. Only a request that found no slot shows the limit
        # holding back demand.
        return self._held_back and self._busiest >= int(self._limit)

    def _update(self, now: float) -> None:
        window, busiest, saturated = self._window, self._busiest, self._binding()
        if self.min_latency is None and len(window) >= 3 and not self._spans_idle(now):
            # For the first probe's fit. Fewer says little about a rate, and a window stretched over
            # idle time understates it.
            self._rates.append(len(window) / max(now - self._window_started, self._policy.update_interval))
        late_reads = self._late_reads
        self._new_window(now)
        lag = self._loop_lag()
        self._congested = saturated and lag >= self._policy.congested_lag
        self._late_updates = self._late_updates + 1 if lag >= _SWAMPED_LAG else 0
        if late_reads >= _BACKLOG_READS:
            # A backlog in the kernel (after a stall): new connections wait behind it for seconds,
            # and what runs here takes the CPU that would drain it. Halve the limit each update it
            # lasts; it grows back as usual once reads are prompt again (docs/overload.md, stop 28).
            self._limit = max(float(self._policy.min_limit), min(self._limit, float(busiest)) / 2)
            return
        if self._late_updates >= _SWAMPED_UPDATES and not saturated:
            # Swamped below the limit (a stall, a burst the loop cannot even read): growing would
            # admit all it reads and refuse nothing. Hold the limit at what is in flight, so the
            # door refuses the excess and the next update finds it reached and congested.
            self._limit = max(float(self._policy.min_limit), float(busiest))
            return
        if self.min_latency is None:
            # No baseline: latency says nothing yet, the loop's lateness does. On time with the
            # limit in use (200 chats on a slow model, the CPU idle), more would be served: grow.
            # Late, hold: grown on a loop 2-20 ms late, a 3x burst's first half-second took
            # 170-440 ms to refuse, and one let in 100 at once 0.7-2.1 s (docs/overload.md).
            # Held, a binding limit on a late loop is congested and the tick probes. Only held:
            # one late reading (a GC, a neighbour) must not pin a service that waits seconds on
            # its model to the probe's floor.
            if lag < self._policy.congested_lag and busiest >= self._limit / 2:
                self._limit = min(float(self._policy.max_limit), self._limit + math.sqrt(self._limit))
            return
        if not self._congested:
            # Not queueing here, or the limit is not what holds requests back (a neighbour took
            # the CPU): cutting would only refuse requests that are not the cause.
            gradient = 1.0
        elif len(window) < 3:
            return  # too few samples to say anything
        else:
            window.sort()
            median = window[len(window) // 2]
            target = self.min_latency * (1 + self._policy.latency_tolerance) + self._policy.latency_allowance
            gradient = min(2.0, max(0.5, target / median))
        if gradient >= 1.0 and busiest < self._limit / 2:
            return  # not limited by us: no evidence that more would be fine
        target = gradient * self._limit
        self._limit = min(float(self._policy.max_limit), max(float(self._policy.min_limit), target + math.sqrt(target)))
        self._stuck = self._stuck + 1 if int(self._limit) <= self._policy.min_limit else 0
        if self._stuck >= _STUCK_UPDATES:
            self._start_probe(now)

    def _spans_idle(self, now: float) -> bool:
        # A window over two intervals long had nothing to update it: an idle spell is in it.
        return now - self._window_started > 2 * self._policy.update_interval

    def _new_window(self, now: float) -> None:
        self._window, self._busiest, self._held_back, self._window_started = [], 0, False, now
        self._late_reads = 0
        self._next_update = now + self._policy.update_interval

    def _start_probe(self, now: float) -> None:
        self.probing, self._probe_started, self._probe, self._stuck = True, now, [], 0

    def _end_probe(self, now: float) -> None:
        self._probe.sort()
        self.min_latency = self._probe[len(self._probe) // 2]
        self.probing, self._probe = False, []
        self._loop_lag()  # the probe's lateness belongs to no window after it
        self._late_updates = 0
        if self._rates:  # gathered only until the first probe
            # Little's law: what the recent rate needs in flight at the target latency, for the limit
            # no baseline ever checked (later probes leave the gradient's limit as it was). Only ever
            # lower: a limit that served fine stays; one that a burst found unmeasured is fitted.
            fit = max(self._rates) * (self.min_latency * (1 + self._policy.latency_tolerance) + self._policy.latency_allowance)
            self._limit = min(self._limit, max(float(self._policy.min_limit), fit + math.sqrt(fit)))
            self._rates.clear()
        self._new_window(now)
        jitter = 1 + self._policy.probe_jitter * (2 * self._rng.random() - 1)
        self._next_probe = now + self._policy.probe_interval * jitter
