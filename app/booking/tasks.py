"""Periodic jobs of the booking domain."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ColumnElement, Update, false, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.booking import reminders
from app.booking.models import Booking, BookingStatus, Channel
from app.capacity.models import Closure, opened_by_own_plan
from app.clock import Clock
from app.enforcement.models import ActionKind, OfficeAction
from app.offices.models import City, Office
from app.sms.tasks import job_context, run_in_session, run_job


def close_day() -> dict[str, int]:
    """After the offices close: bookings nobody checked in become no-shows (and may suspend
    their national IDs), bookings checked in but never marked served are closed as served
    (the citizen came; staff forgot the last click), as are walk-ins never marked (they were
    at the counter), waitlist entries of past days expire,
    and the day that just entered the horizon gets its counters. Safe to run twice, or
    every hour: it only touches past days' bookings still open.

    Returns the counts: ``no_shows``, ``closed_office`` (cancelled: a closure, an official
    holiday or a block shut their office that day), ``served`` (closed from checked in, and walk-ins),
    ``waitlist_expired``, ``suspended`` (for repeated no-shows) and ``office_days_added``."""
    return run_job(_close_day())


async def _close_day() -> dict[str, int]:
    async with job_context() as app, app.sessions() as session:
        today = app.clock.today()
        # One statement each, and one transaction with the suspensions they lead to: a night
        # of a whole country's bookings, read into objects and suspended one national ID at a
        # time, outlasted the job's time limit, and a run stopped after its commit left the
        # rest unsuspended for good (the next run found no booking still to close).
        # Bookings a closure's moves never reached (a recount, Redis away until midnight) were
        # at an office that was shut: cancelled, not no-shows that may suspend the citizen.
        # So were those a block's moves never reached (the same causes): the office took nobody.
        # And those of an official holiday the calendar learned of late (a release, the
        # setting turned; app.regulator.service._follow_holidays leaves a begun slot's to us).
        holidays = app.capacity.holidays(today - CLOSE_LOOKS_BACK, today - dt.timedelta(days=1))
        shut = 0
        for shut_by in [_closed_that_day(), _holiday_that_day(holidays), *await _blocked_that_day(session, app.clock)]:
            shut += await _count(
                session,
                _closing(BookingStatus.BOOKED, BookingStatus.CANCELLED, today, only=shut_by, at=app.clock.now()),
            )
        # A walk-in was at the counter when the clerk booked them: one never marked served is
        # served, not a no-show that could suspend them (three such visits in a month had).
        # (Not one moved since to an office that never saw them, a block's or a closure's; one
        # moved to a later slot of the same office, a clerk's cut, was still in its room.)
        stayed = Booking.moved_from_office_id.is_(None) | (Booking.moved_from_office_id == Booking.office_id)
        walked_in = await _count(
            session,
            _closing(
                BookingStatus.BOOKED, BookingStatus.SERVED, today, only=(Booking.channel == Channel.WALK_IN) & stayed
            ),
        )
        # The absent's national IDs, for their suspensions; the others only counted (a night
        # of a country's served citizens, read back as strings, only to be counted).
        no_shows = list(
            await session.scalars(
                _closing(BookingStatus.BOOKED, BookingStatus.NO_SHOW, today).returning(Booking.national_id),
                execution_options={"synchronize_session": False},
            )
        )
        served = await _count(session, _closing(BookingStatus.CHECKED_IN, BookingStatus.SERVED, today))
        expired = await _count(session, _closing(BookingStatus.WAITLISTED, BookingStatus.CANCELLED, today))
        # With the absent a clerk marked yesterday: a mark whose suspension was not made (the
        # record or Redis away just after it) is weighed again.
        marked = await session.scalars(
            select(Booking.national_id).where(
                Booking.date == today - dt.timedelta(days=1), Booking.status == BookingStatus.NO_SHOW
            )
        )
        absent = [*no_shows, *marked]
        suspended = await app.console.suspend_for_no_shows(
            session=session, national_ids=absent, today=today, last_day=today - dt.timedelta(days=1)
        )
        await session.commit()
        # Their holds need no unhold: holds of past days count for nothing (the HOLD script).
        # Every suspension in force is told, not only tonight's: one whose telling was lost
        # (a run stopped here, Redis away, a clerk's mark whose call failed) is told now.
        await app.capacity.tell_suspensions(session=session, today=today)
        added = await app.capacity.extend_horizon(session=session, today=today)
        return {
            "no_shows": len(no_shows),
            "closed_office": shut,
            "served": served + walked_in,
            "waitlist_expired": expired,
            "suspended": suspended,
            "office_days_added": added,
        }


def _closing(
    status: BookingStatus,
    to: BookingStatus,
    today: dt.date,
    *,
    only: ColumnElement[bool] | None = None,
    at: dt.datetime | None = None,
) -> Update:
    """Past days' bookings still in ``status`` (and ``only`` those) moved to ``to`` (a cancel
    ``at`` then), from the last CLOSE_LOOKS_BACK days."""
    # Each day named, not a range: the bookings' index leads with the date, then the status,
    # and a range of dates walked every entry of the month (every status, 90 million at a
    # national three million a day) to find one status; a list of days is a look each.
    days = [today - dt.timedelta(days=back) for back in range(1, CLOSE_LOOKS_BACK.days + 1)]
    query = update(Booking).where(Booking.date.in_(days), Booking.status == status).values(status=to)
    if only is not None:
        query = query.where(only)
    if at is not None:
        query = query.values(cancelled_at=at)
    return query


async def _count(session: AsyncSession, closing: Update) -> int:
    """Carry out ``closing``: how many bookings it closed."""
    result = await session.execute(closing, execution_options={"synchronize_session": False})
    return int(result.rowcount)  # type: ignore[attr-defined]


def _closed_that_day() -> ColumnElement[bool]:
    """A booking whose office a regulator's closure (of its province, or the country) shut on its day."""
    return (
        select(Closure.id)
        .join(City, Closure.province_id.is_(None) | (Closure.province_id == City.province_id))
        .join(Office, Office.city_id == City.id)
        .where(Closure.date == Booking.date, Office.id == Booking.office_id)
        .correlate(Booking)
        .exists()
    )


def _holiday_that_day(holidays: set[dt.date]) -> ColumnElement[bool]:
    """A booking on an official holiday at an office no plan of its own opened that day."""
    if not holidays:
        return false()
    return Booking.date.in_(sorted(holidays)) & ~opened_by_own_plan(Booking.office_id, Booking.date)


CLOSE_LOOKS_BACK = dt.timedelta(days=30)
"""How far back the night's close looks for bookings left open. Unbounded, each of its
statements walked the index of every day since the service began: a cost growing with every
booking ever made, against the job's time limit. A month of nights all failed is a month of
``nobat_job_last_success_timestamp_seconds`` not moving, long paged."""

BLOCKS_AT_ONCE = 200
"""Blocks weighed in one statement by the night's close (``_blocked_that_day``)."""


async def _blocked_that_day(session: AsyncSession, clock: Clock) -> list[ColumnElement[bool]]:
    """A booking at an office a block shut on its day: from the block's hour on the day it
    began (a slot begun before it was the office's to serve, and missed, a no-show) to the day
    before it was lifted, in the offices' time. (The lift's own day counts as open: a citizen
    who booked after the lift and did not come is a no-show.) In parts of ``BLOCKS_AT_ONCE``
    blocks, a statement each: one OR term a block, and SQLite nests an expression at most
    1,000 deep (a country's blocks of a week could pass it)."""
    since = clock.now() - CLOSE_LOOKS_BACK  # the blocks of the days the close looks at
    blocks = await session.execute(
        select(OfficeAction.office_id, OfficeAction.started_at, OfficeAction.lifted_at).where(
            OfficeAction.kind == ActionKind.BLOCK, OfficeAction.lifted_at.is_(None) | (OfficeAction.lifted_at >= since)
        )
    )
    shut = []
    for office_id, started, lifted in blocks:
        began = clock.aware(started).astimezone(clock.tz)
        term = (Booking.office_id == office_id) & (
            (Booking.date > began.date()) | ((Booking.date == began.date()) & (Booking.slot_time >= f"{began:%H:%M}"))
        )
        if lifted is not None:
            term = term & (Booking.date < _day_of(clock, lifted))
        shut.append(term)
    return [or_(*shut[i : i + BLOCKS_AT_ONCE]) for i in range(0, len(shut), BLOCKS_AT_ONCE)]


def _day_of(clock: Clock, written: dt.datetime) -> dt.date:
    return clock.aware(written).astimezone(clock.tz).date()


def fill_waitlists_left() -> int:
    """Every minute: settle the promotions and bookings whose commit's answer was lost, and
    give the lines the free seats a failed promotion left in front of them
    (app.booking.service.BookingService.fill_waitlists_left). The offices filled."""
    return run_in_session(lambda app, session: app.bookings.fill_waitlists_left(session=session))


def end_spent_lines() -> int:
    """Every five minutes: end and tell today's places in lines with no slot left ahead
    (app.booking.service.BookingService.end_spent_lines). The places ended."""
    return run_in_session(lambda app, session: app.bookings.end_spent_lines(session=session))


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
