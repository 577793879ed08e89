"""Periodic jobs of the booking domain."""

from __future__ import annotations

from sqlalchemy import select

from app.booking import reminders
from app.booking.models import Booking, BookingStatus
from app.sms.tasks import job_context, run_in_session, run_job


def close_day() -> dict[str, int]:
    """After the offices close: bookings nobody checked in become no-shows (and may suspend
    their national IDs), bookings checked in but never marked served are closed as served
    (the citizen came; staff forgot the last click), waitlist entries of past days expire,
    and the day that just entered the horizon gets its counters. Safe to run twice, or
    every hour: it only touches past days' bookings still open.

    Returns the counts: ``no_shows``, ``served`` (closed from checked in),
    ``waitlist_expired`` and ``office_days_added``."""
    return run_job(_close_day())


async def _close_day() -> dict[str, int]:
    async with job_context() as app, app.sessions() as session:
        today = app.clock.today()

        async def past(status: BookingStatus) -> list[Booking]:
            return list(await session.scalars(select(Booking).where(Booking.status == status, Booking.date < today)))

        unchecked = await past(BookingStatus.BOOKED)
        for booking in unchecked:
            booking.status = BookingStatus.NO_SHOW
        served = await past(BookingStatus.CHECKED_IN)
        for booking in served:
            booking.status = BookingStatus.SERVED
        expired = await past(BookingStatus.WAITLISTED)
        for booking in expired:
            booking.status = BookingStatus.CANCELLED
        await session.commit()
        # No longer active: they stop counting against the citizen's limits, as when staff mark them.
        for booking in unchecked + served:
            await app.capacity.unhold(national_id=booking.national_id, tracking_code=booking.tracking_code)
        for national_id in sorted({b.national_id for b in unchecked}):
            await app.console.record_no_show(session=session, national_id=national_id)
        added = await app.capacity.extend_horizon(session=session, today=today)
        return {
            "no_shows": len(unchecked),
            "served": len(served),
            "waitlist_expired": len(expired),
            "office_days_added": added,
        }


def fill_waitlists_left() -> int:
    """Every minute: give the lines the free seats a failed promotion left in front of them
    (app.booking.service.BookingService.fill_waitlists_left). The offices filled."""
    return run_in_session(lambda app, session: app.bookings.fill_waitlists_left(session=session))


def send_reminders() -> int:
    """Every minute: queue the reminders due now (the evening before, an hour before)."""
    return run_job(_send_reminders())


async def _send_reminders() -> int:
    async with job_context() as app, app.sessions() as session:
        return await reminders.send_due(
            session=session,
            messenger=app.messenger,
            now=app.clock.now(),
            evening_hour=app.settings.reminder_evening_hour,
        )
