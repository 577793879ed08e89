"""Periodic job of the regulator domain."""

from __future__ import annotations

from app.sms.tasks import job_context, run_job


def finish_closures() -> int:
    """Move the bookings a closure left at its offices (app.regulator.service.finish_closures)."""
    return run_job(_finish_closures())


async def _finish_closures() -> int:
    async with job_context() as app, app.sessions() as session:
        return await app.regulator.finish_closures(session=session)
