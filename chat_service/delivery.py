"""The background task that drains the outbox into analytics, in batches."""

from __future__ import annotations

import asyncio
import contextlib
import time

from resilience import Ok
from servicekit.logging import get_logger

from .analytics_client import AnalyticsClient, RecordItem
from .outbox import Outbox

log = get_logger("outbox")

# Statuses that mean "this record is invalid", as opposed to "not now" (5xx, 429) or "we are
# misconfigured" (401, 403): only these may take a record out of the delivery queue.
REFUSED_AS_INVALID = frozenset({400, 413, 422})


class Deliverer:
    """Wakes on each append (or every `poll` seconds), sends what is waiting, backs off on failure.

    It also keeps the outbox healthy (`Outbox.maintain`): every `poll` seconds while all is well,
    every `recover_poll` seconds while the outbox refuses appends (full disk, not open yet).
    """

    def __init__(
        self,
        outbox: Outbox,
        client: AnalyticsClient,
        *,
        batch: int,
        linger: float,
        poll: float = 1.0,
        recover_poll: float = 0.25,
        max_backoff: float = 0.5,
    ) -> None:
        self.outbox = outbox
        self.client = client
        self.batch = batch
        self.linger = linger
        self.poll = poll
        self.recover_poll = recover_poll
        self.max_backoff = max_backoff
        self.delivered = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failures = 0
        self._maintained = 0.0
        self._progressed_at = time.monotonic()  # the last time the outbox was found empty or a batch went out

    def stalled_seconds(self) -> float:
        """Seconds since this deliverer last found nothing to send or had a batch acknowledged.

        While records wait, that bounds how long delivery has been stuck (`chat_outbox_stalled_seconds`).
        """
        return time.monotonic() - self._progressed_at

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

    async def flush(self, seconds: float) -> int | None:
        """Deliver until the outbox is empty, analytics refuses, or `seconds` pass; never raises.

        Returns how many of this process's records are left (None when the outbox cannot say).
        """
        await self.stop()
        try:
            async with asyncio.timeout(seconds):
                while await self.deliver_once():
                    pass
        except TimeoutError:
            pass
        except Exception as error:  # a full or broken disk must not fail the shutdown
            log.warning("outbox_flush_failed", error=type(error).__name__)
        try:
            left = await self.outbox.owned_depth()
        except Exception as error:
            log.warning("outbox_flush_failed", error=type(error).__name__)
            left = None
        log.info("outbox_flushed", left=left, delivered=self.delivered)
        return left

    async def deliver_once(self) -> bool:
        """Send one batch; True when it was acknowledged (so there may be more to do)."""
        claimed = await self.outbox.next_batch(self.batch)
        if not claimed:
            self._progressed_at = time.monotonic()
            return False
        ids = [row_id for row_id, _ in claimed]
        outcome = await self.client.record_batch([item for _, item in claimed])
        if isinstance(outcome, Ok):
            await self.outbox.acknowledge(ids)
            self.delivered += len(ids)
            self._failures = 0
            self._progressed_at = time.monotonic()
            return True
        if outcome.status in REFUSED_AS_INVALID:
            await self._isolate(claimed)
            return True
        self._failures += 1
        log.warning("outbox_delivery_failed", reason=outcome.reason, batch=len(ids))
        return False

    async def _isolate(self, claimed: list[tuple[int, RecordItem]]) -> None:
        """Analytics refused a batch as invalid: send its records one by one, and set aside
        each one refused on its own, so one bad record never blocks the ones behind it."""
        for row_id, item in claimed:
            outcome = await self.client.record_batch([item])
            if isinstance(outcome, Ok):
                await self.outbox.acknowledge([row_id])
                self.delivered += 1
            elif outcome.status in REFUSED_AS_INVALID:
                await self.outbox.dead_letter(row_id, outcome.status)
                log.error("outbox_dead_letter", message_id=item.message_id, status=outcome.status)
            # Otherwise the record stays where it is and goes out with a later batch.

    async def _run(self) -> None:
        while True:
            wait = self.poll if self.outbox.accepting else self.recover_poll
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            self._wake.clear()
            if self.linger:
                await asyncio.sleep(self.linger)  # let a burst of appends share one batch
            try:
                if time.monotonic() - self._maintained >= wait:
                    self._maintained = time.monotonic()
                    await self.outbox.maintain()
                while await self.deliver_once():
                    pass
            except Exception:  # a disk or bug error must not kill delivery for good
                log.exception("outbox_deliverer_error")
            if self._failures:
                await asyncio.sleep(min(self.max_backoff, 0.05 * 2 ** min(self._failures, 6)))
