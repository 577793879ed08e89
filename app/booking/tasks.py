"""Periodic jobs of the booking domain."""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from app.booking import reminders
from app.booking.models import Booking, BookingStatus
from app.sms.tasks import job_context


def close_day() -> dict[str, int]:
    """After the offices close: bookings nobody checked in become no-shows (and may suspend
    their national IDs), waitlist entries of past days expire, and the day that just entered
    the horizon gets its counters. Safe to run twice: it only touches what is still open."""
    return asyncio.run(_close_day())


async def _close_day() -> dict[str, int]:
    async with job_context() as app, app.sessions() as session:
        today = app.clock.today()
        unchecked = list(
            await session.scalars(select(Booking).where(Booking.status == BookingStatus.BOOKED, Booking.date < today))
        )
        for booking in unchecked:
            booking.status = BookingStatus.NO_SHOW
        expired = list(
            await session.scalars(
                select(Booking).where(Booking.status == BookingStatus.WAITLISTED, Booking.date < today)
            )
        )
        for booking in expired:
            booking.status = BookingStatus.CANCELLED
        await session.commit()
        for national_id in sorted({b.national_id for b in unchecked}):
            await app.console.record_no_show(session=session, national_id=national_id)
        added = await app.capacity.extend_horizon(session=session, today=today)
        return {"no_shows": len(unchecked), "waitlist_expired": len(expired), "office_days_added": added}


def send_reminders() -> int:
    """Every minute: queue the reminders due now (the evening before, an hour before)."""
    return asyncio.run(_send_reminders())


async def _send_reminders() -> int:
    async with job_context() as app, app.sessions() as session:
        return await reminders.send_due(
            session=session,
            messenger=app.messenger,
            now=app.clock.now(),
            evening_hour=app.settings.reminder_evening_hour,
        )
