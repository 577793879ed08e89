"""Periodic job of the enforcement domain."""

from __future__ import annotations

from app.sms.tasks import job_context, run_job


def finish_blocks() -> int:
    """Move the bookings a block left at its office (app.enforcement.service.finish_blocks)."""
    return run_job(_finish_blocks())


async def _finish_blocks() -> int:
    async with job_context() as app, app.sessions() as session:
        return await app.enforcement.finish_blocks(session=session)
