"""Periodic job of the complaints domain."""

from __future__ import annotations

from app.sms.tasks import job_context, run_job


def flag_overdue() -> int:
    """Flag complaints with no first response within the promised hours (72 by default)."""
    return run_job(_flag_overdue())


async def _flag_overdue() -> int:
    async with job_context() as app, app.sessions() as session:
        return await app.complaints.flag_overdue(session=session)
