"""Spans that explain a call: one per call, a child per attempt, the named events on them.

Built on the OpenTelemetry API only (a no-op until an SDK is installed by the application), and
only for a pipeline given a `tracer=`: a pipeline without one runs none of this code.

- `<target>` (the call): `resilience.target`, `resilience.outcome` ("ok" or the fallback's
  reason), `resilience.attempts`, and the last HTTP status when a fallback had one; status
  ERROR on a fallback.
- `<target> attempt` (each attempt that passed the breaker): `resilience.attempt` (1, 2, ...)
  and `resilience.attempt.timeout_s` (the seconds it was allowed); a failed attempt records
  its exception and status ERROR. The client span of the request itself is its child.
- Every `Event` becomes an event on the span current when it happened: breaker transitions
  and `attempt_failed` on the attempt that caused them, `retry_scheduled`, `budget_exhausted`,
  `bulkhead_rejected`, `hedge_*` and `fallback` (with its reason) on the call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opentelemetry.trace import Span, StatusCode, get_current_span

from ._outcome import Fallback

if TYPE_CHECKING:
    from opentelemetry.util.types import AttributeValue

    from ._events import Event
    from ._outcome import Outcome

_ATTRIBUTE_TYPES = (str, bool, int, float)


def record_outcome(span: Span, outcome: Outcome[Any]) -> None:
    """The call's result on its span."""
    if isinstance(outcome, Fallback):
        span.set_attribute("resilience.outcome", outcome.reason)
        span.set_attribute("resilience.attempts", outcome.attempts)
        if outcome.status is not None:
            span.set_attribute("http.response.status_code", outcome.status)
        span.set_status(StatusCode.ERROR, f"fallback: {outcome.reason}")
    else:
        span.set_attribute("resilience.outcome", "ok")
        span.set_attribute("resilience.attempts", outcome.attempts)


def add_event(event: Event) -> None:
    """The event on the current span, with its fields as attributes (None fields left out)."""
    span = get_current_span()
    if span.is_recording():
        attributes: dict[str, AttributeValue] = {"resilience.target": event.target}
        for key, value in event.fields.items():
            if isinstance(value, _ATTRIBUTE_TYPES):
                attributes[key] = value
            elif value is not None:
                attributes[key] = str(value)
        span.add_event(event.name, attributes)
