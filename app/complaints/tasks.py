"""Periodic job of the complaints domain."""

from __future__ import annotations

import asyncio

from app.sms.tasks import job_context


def flag_overdue() -> int:
    """Flag complaints with no first response within the promised hours (72 by default)."""
    return asyncio.run(_flag_overdue())


async def _flag_overdue() -> int:
    async with job_context() as app, app.sessions() as session:
        return await app.complaints.flag_overdue(session=session)
