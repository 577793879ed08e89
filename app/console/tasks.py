"""Periodic job of the console domain."""

from __future__ import annotations

from app.sms.tasks import job_context, run_job


def finish_plans() -> int:
    """Apply the clerks' plan changes their request did not see through
    (app.console.service.Console.finish_plans). The offices done."""
    return run_job(_finish_plans())


async def _finish_plans() -> int:
    async with job_context() as app, app.sessions() as session:
        return await app.console.finish_plans(session=session)
