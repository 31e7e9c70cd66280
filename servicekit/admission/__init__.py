"""Admission control: an adaptive concurrency limit with a short, deadline-bounded queue.

`Limiter` decides (configured once from an `AdmissionPolicy`, shared by every request);
`AdmissionMiddleware` applies it to the work routes and answers `503` + `Retry-After` to what
it sheds; `ShedGate` lets the server's protocol write that `503` itself, before any ASGI work;
`commit_reply` marks where a route's reply becomes permanent. See `_gradient` for the algorithm
and `testing.FakeClock` for deterministic tests. Time comes from a `resilience.TimerClock`
(`resilience.SystemClock` by default): one clock protocol for the project.
"""

from ._gate import GATE_KEY, Refusal, ShedGate
from ._limiter import Limiter, Permit, Shed, ShedReason
from ._metrics import AdmissionMetrics
from ._middleware import CLIENT_CLOSED_REQUEST, STATE_KEY, AdmissionMiddleware, ClientGone, commit_reply
from ._policy import AdmissionPolicy

__all__ = [
    "CLIENT_CLOSED_REQUEST",
    "GATE_KEY",
    "STATE_KEY",
    "AdmissionMetrics",
    "AdmissionMiddleware",
    "AdmissionPolicy",
    "ClientGone",
    "Limiter",
    "Permit",
    "Refusal",
    "Shed",
    "ShedGate",
    "ShedReason",
    "commit_reply",
]
