"""The background task that drains the outbox into analytics, in batches."""

from __future__ import annotations

import asyncio
import contextlib

from resilience import Ok
from servicekit.logging import get_logger

from .analytics_client import AnalyticsClient, RecordItem
from .outbox import Outbox

log = get_logger("outbox")

# Statuses that mean "this record is invalid", as opposed to "not now" (5xx, 429) or "we are
# misconfigured" (401, 403): only these may take a record out of the delivery queue.
REFUSED_AS_INVALID = frozenset({400, 413, 422})


class Deliverer:
    """Wakes on each append (or every `poll` seconds), sends what is waiting, backs off on failure."""

    def __init__(
        self,
        outbox: Outbox,
        client: AnalyticsClient,
        *,
        batch: int,
        linger: float,
        poll: float = 1.0,
        max_backoff: float = 2.0,
    ) -> None:
        self.outbox = outbox
        self.client = client
        self.batch = batch
        self.linger = linger
        self.poll = poll
        self.max_backoff = max_backoff
        self.delivered = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failures = 0

    def notify(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-deliverer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def flush(self, seconds: float) -> int:
        """Deliver until the outbox is empty, analytics refuses, or `seconds` pass."""
        await self.stop()
        try:
            async with asyncio.timeout(seconds):
                while await self.deliver_once():
                    pass
        except TimeoutError:
            pass
        left = self.outbox.exact_depth()
        log.info("outbox_flushed", left=left, delivered=self.delivered)
        return left

    async def deliver_once(self) -> bool:
        """Send one batch; True when it was acknowledged (so there may be more to do)."""
        claimed = self.outbox.claim(self.batch)
        if not claimed:
            return False
        ids = [row_id for row_id, _ in claimed]
        try:
            outcome = await self.client.record_batch([item for _, item in claimed])
        except BaseException:
            self.outbox.release(ids)
            raise
        if isinstance(outcome, Ok):
            self.outbox.acknowledge(ids)
            self.delivered += len(ids)
            self._failures = 0
            return True
        if outcome.status in REFUSED_AS_INVALID:
            await self._isolate(claimed)
            return True
        self.outbox.release(ids)
        self._failures += 1
        log.warning("outbox_delivery_failed", reason=outcome.reason, waiting=self.outbox.depth())
        return False

    async def _isolate(self, claimed: list[tuple[int, RecordItem]]) -> None:
        """Analytics refused a batch as invalid: send its records one by one, and set aside
        each one refused on its own, so one bad record never blocks the ones behind it."""
        for row_id, item in claimed:
            outcome = await self.client.record_batch([item])
            if isinstance(outcome, Ok):
                self.outbox.acknowledge([row_id])
                self.delivered += 1
            elif outcome.status in REFUSED_AS_INVALID:
                self.outbox.dead_letter(row_id, outcome.status)
                log.error("outbox_dead_letter", message_id=item.message_id, status=outcome.status)
            else:
                self.outbox.release([row_id])

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll):
                    await self._wake.wait()
            self._wake.clear()
            if self.linger:
                await asyncio.sleep(self.linger)  # let a burst of appends share one batch
            try:
                while await self.deliver_once():
                    pass
            except Exception:  # a disk or bug error must not kill delivery for good
                log.exception("outbox_deliverer_error")
            if self._failures:
                await asyncio.sleep(min(self.max_backoff, 0.05 * 2 ** min(self._failures, 6)))
