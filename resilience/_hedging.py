"""Hedged calls: an attempt slower than `hedge_delay` is not cut short; a second copy joins it.

"The Tail at Scale" (Dean and Barroso) and Polly v8's hedging strategy: for an idempotent call,
a slow answer is usually one slow request, not a dead peer, so starting another copy beats both
waiting and cancelling. tenacity cannot run attempts side by side, so this loop replaces it
when a policy hedges; every other layer (deadline, bulkhead, breaker, budget, attempt timeouts,
events) is the pipeline's own.
"""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING, Any, TypeVar

from ._errors import Unknown
from ._outcome import Fallback, Ok, Outcome, Reason

if TYPE_CHECKING:
    from ._breaker import Admission
    from ._classify import Failure
    from ._pipeline import Attempt, Pipeline

T = TypeVar("T")


async def hedged(pipeline: Pipeline, attempt: Attempt[T], deadline: float, attempts: int) -> Outcome[T]:
    """Run copies of `attempt` until one answers, at most `attempts` of them.

    The first copy starts at once, and may use all the time before the deadline. While copies
    run unanswered for `hedge_delay`, another starts beside them (a hedge); when a copy fails
    and none is left running, another starts after the usual backoff (a retry). Every further
    copy passes the checks a retry passes (open breaker, deadline, retry budget, Retry-After).
    The first answer wins; the copies still running are cancelled, which counts for nothing
    with the breaker.
    """
    p = pipeline
    hedge_delay = p.policy.hedge_delay
    assert hedge_delay is not None
    running: set[asyncio.Task[T]] = set()
    started: list[asyncio.Task[T]] = []
    launched = 0
    failure: Failure | None = None
    last_error: Exception | None = None
    stop = False
    why: Reason | None = None

    def launch(admission: Admission) -> None:
        nonlocal launched
        launched += 1
        task = asyncio.create_task(p._judged(attempt, admission, deadline - p._clock.monotonic(), launched))
        running.add(task)
        started.append(task)

    admission = p.breaker.admit()
    if admission == "reject":
        return p._fallback(Fallback("breaker_open"))
    launch(admission)
    try:
        while True:
            if not running:
                if stop or launched >= attempts:
                    break
                pause = p._backoff(launched, failure)
                stop, why = p._refuse_retry(failure, deadline, pause)
                if stop:
                    break
                p._emit("retry_scheduled", attempt=launched, sleep=round(pause, 4))
                await p._clock.sleep(pause)
                admission = p.breaker.admit()
                if admission == "reject":
                    why = "breaker_open"
                    break
                launch(admission)
                continue
            hedge = not stop and launched < attempts
            done = await _first_done(p, running, hedge_delay if hedge else None)
            for task in done:
                running.discard(task)
                error = task.exception()
                if error is None:
                    return Ok(task.result(), attempts=launched)
                if isinstance(error, Unknown):
                    raise error.error from None
                failure = p._classify(error)
                assert failure is not None and isinstance(error, Exception)
                if not failure.transient:
                    return p._failed(error, launched, None)
                last_error = error
                stop = stop or p._asks_too_much(failure)
            if done:
                continue
            admission = p.breaker.admit()  # before the budget: a hedge the breaker refuses costs nothing
            if admission == "reject":
                stop, why = True, "breaker_open"
            else:
                stop, why = p._refuse_retry(None, deadline, 0.0)
                if stop:
                    p.breaker.release(admission)
                else:
                    launch(admission)
                    p._emit("hedge_started", attempt=launched, after=hedge_delay)
                    continue
            p._emit("hedge_skipped", reason=why, attempt=launched + 1)
    finally:
        await _cancel_all(started)
    assert last_error is not None
    return p._failed(last_error, launched, why)


async def _first_done(pipeline: Pipeline, running: set[asyncio.Task[T]], within: float | None) -> set[asyncio.Task[T]]:
    """The copies that ended first, or none if `within` seconds passed on the pipeline's clock."""
    if within is None:
        done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        return done
    # A timer callback, not a timeout: nothing is cancelled, so no exception is thrown through
    # this frame (which would also stop CPython 3.11 from tracing it, and coverage with it).
    elapsed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    timer = pipeline._clock.call_later(within, functools.partial(elapsed.set_result, None))
    try:
        waiting: list[asyncio.Future[Any]] = [*running, elapsed]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    finally:
        timer.cancel()
        elapsed.cancel()
    return {task for task in running if task.done()}  # one may have ended as time ran out


async def _cancel_all(tasks: list[asyncio.Task[T]]) -> None:
    """Cancel the copies still running, wait for them, and collect their errors."""
    unfinished = [task for task in tasks if not task.done()]
    for task in unfinished:
        task.cancel()
    if unfinished:
        await asyncio.wait(unfinished)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: a loser's failure is not an unhandled error
