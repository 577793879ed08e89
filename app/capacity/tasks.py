"""Periodic job of the capacity domain."""

from __future__ import annotations

from app.capacity.watch import RebuildRunning, rebuild_paused
from app.sms.tasks import job_context, run_job


def recount() -> int:
    """Count Redis again from the record, as `python -m app rebuild` does (bookings pause on
    every instance meanwhile): run at night (workers.cron), it gives back what failures left
    counted for nobody. The office-days written; 0 if a recount was already under way."""

    async def job() -> int:
        async with job_context() as app:
            try:
                return await rebuild_paused(
                    app.capacity, app.sessions, today=app.clock.today(), wait=app.settings.rebuild_settle_seconds
                )
            except RebuildRunning:
                return 0

    return run_job(job())
