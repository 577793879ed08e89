"""Periodic job of the capacity domain."""

from __future__ import annotations

import datetime as dt
import logging

from croniter import croniter

from app.capacity.watch import RebuildRunning, rebuild_paused
from app.sms.tasks import job_context, run_job, scheduled_run, skip_this_run

log = logging.getLogger(__name__)

NIGHT_LATE = dt.timedelta(minutes=45)
"""A night's run (the close, the recount) this long past its time meets the morning's first
bookings: workers.cron lets its copy wait in the queue no longer, and the recount, come later
still (the scheduler started again after the job queues' Redis was away all night, with its
due runs enqueued at once), waits for the next night."""


def recount() -> int:
    """Count Redis again from the record, as `python -m app rebuild` does (bookings pause on
    every instance meanwhile): run at night (workers.cron), it gives back what failures left
    counted for nobody. The office-days written; 0 if a recount was already under way, or the
    night's run came in the morning."""

    async def job() -> int:
        async with job_context() as app:
            recount_at = app.settings.recount_at  # "off" here: a copy queued before it was turned off
            if scheduled_run() and recount_at != "off" and (due := _late(recount_at, app.clock.now())):
                # Bookings paused nationwide for half a minute at 09:00 had been the price.
                log.warning("the night's recount due at %s came in the morning: left to the next night", due)
                skip_this_run()
                return 0
            try:
                return await rebuild_paused(
                    app.capacity, app.sessions, today=app.clock.today(), wait=app.settings.rebuild_settle_seconds
                )
            except RebuildRunning:
                return 0

    return run_job(job())


def _late(cron: str, now: dt.datetime) -> dt.datetime | None:
    """When the run now under way was due, if that is more than NIGHT_LATE ago."""
    # A minute on: a run started at 03:30:00 exactly is today's, not yesterday's.
    due: dt.datetime = croniter(cron, now + dt.timedelta(minutes=1)).get_prev(dt.datetime)
    return due if now - due > NIGHT_LATE else None
