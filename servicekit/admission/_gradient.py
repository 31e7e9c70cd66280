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

The limit starts at `initial_limit`, and no probe runs in the first second. Until the first probe
a loop 20 ms late or more never grows it: without a baseline, growth would be blind. The first
probe ends by fitting the limit to what was being served (Little's law): the highest completion
rate of the updates before it, times the target latency, plus the square-root headroom, if that
is lower than the limit was. A burst's first probe would otherwise hand the burst the unmeasured
initial limit again, to be halved update by update while the loop is swamped. Two more
additions. The limit does not grow while fewer than half of it were in use (Netflix's
"app-limited" rule): an idle service would otherwise drift to `max_limit` and admit a whole
burst at once. And a limit stuck at `min_limit` for a second means latency rose for a reason
no concurrency cap can fix (a slower model or dependency), so the no-load latency is probed
again instead of shedding against a stale baseline until the next scheduled probe.
"""

from __future__ import annotations

import math
import random
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
# With no baseline yet, a loop this late reads requests too slowly for growth to mean anything: the
# limit is held. A busy one (200 model chats at the CPU's capacity runs ~5 ms late) still grows, as
# the limit must to serve them.
_BLIND_LAG = 0.02
_RATE_WINDOWS = 10  # updates (1 s at the default interval) whose completion rates the first probe fits the limit to


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
        self._next_update = now + policy.update_interval
        self._rates: deque[float] = deque(maxlen=_RATE_WINDOWS)  # completions per second, per update
        self._stuck = 0
        self.probing = False
        self._probe_started = now
        self._probe: list[float] = []
        self._next_probe = now + _FIRST_PROBE_AFTER
        self._congested = False
        self._late_updates = 0  # consecutive updates whose loop lateness reached _SWAMPED_LAG

    @property
    def limit(self) -> int:
        return self._policy.min_limit if self.probing else int(self._limit)

    def observe(self, latency: float, in_flight: int, *, uncrowded: bool, now: float) -> None:
        """Record a request that finished at `now` after `latency`.

        `uncrowded`: it was admitted with at most `min_limit` in flight. Only such requests
        admitted during a probe (when nothing more is admitted) ran without load all along.
        """
        if self.probing:
            if uncrowded and now - latency >= self._probe_started:
                self._probe.append(latency)
            probe_over = now - self._probe_started >= self._policy.probe_max_seconds
            if len(self._probe) >= self._policy.probe_samples or (probe_over and self._probe):
                self._end_probe(now)
            return
        self._window.append(latency)
        self._busiest = max(self._busiest, in_flight)
        if now >= self._next_update:
            self._update(now)

    def tick(self, now: float) -> None:
        """Start a due probe (called as requests are admitted); only while the limit binds and the loop is late."""
        if not self.probing and self._congested and now >= self._next_probe:
            self._start_probe(now)

    def _update(self, now: float) -> None:
        window, busiest = self._window, self._busiest
        if self.min_latency is None and len(window) >= 3 and now - self._window_started <= 2 * self._policy.update_interval:
            # For the first probe's fit. Fewer says little about a rate, and a window stretched over
            # idle time understates it.
            self._rates.append(len(window) / max(now - self._window_started, self._policy.update_interval))
        self._window, self._busiest, self._window_started = [], 0, now
        self._next_update = now + self._policy.update_interval
        saturated = busiest >= int(self._limit)
        lag = self._loop_lag()
        self._congested = saturated and lag >= self._policy.congested_lag
        self._late_updates = self._late_updates + 1 if lag >= _SWAMPED_LAG else 0
        if self._late_updates >= _SWAMPED_UPDATES and not saturated:
            # Swamped below the limit (a stall, a burst the loop cannot even read): growing would
            # admit all it reads and refuse nothing. Hold the limit at what is in flight, so the
            # door refuses the excess and the next update finds it reached and congested.
            self._limit = max(float(self._policy.min_limit), float(busiest))
            return
        if self.min_latency is None and lag >= _BLIND_LAG:
            # Late before any baseline: growing would be blind. A 3x burst that the loop read too
            # slowly ever to reach the initial limit grew it from 100 to 336 in 3.5 s, 150 in flight
            # and the loop 30-250 ms late (docs/overload.md). Held, the limit is soon reached, and
            # the congested tick probes. Only held: one late reading (a GC, a neighbour) must not
            # pin a service that waits seconds on its model to the probe's floor.
            return
        if not self._congested:
            # Not queueing here, or the limit is not what holds requests back (a neighbour took
            # the CPU, a cold start): cutting would only refuse requests that are not the cause.
            gradient = 1.0
        elif len(window) < 3 or self.min_latency is None:
            return  # too few samples to say anything, or no baseline yet (the next tick probes)
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
        self._window, self._busiest, self._window_started = [], 0, now
        self._next_update = now + self._policy.update_interval
        jitter = 1 + self._policy.probe_jitter * (2 * self._rng.random() - 1)
        self._next_probe = now + self._policy.probe_interval * jitter
