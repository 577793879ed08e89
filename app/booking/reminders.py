"""Reminders: an SMS the evening before a booking and an hour before it.

Nothing is scheduled per booking. A periodic job (``app.booking.tasks.send_reminders``,
every minute) asks the record what is due, in pages, and marks each booking it reminds in
the same transaction as the message, with a compare-and-set, so two overlapping runs or a
retried one never remind anyone twice. A booking that moves has its marks cleared and is
reminded of its new time; a cancelled, served or moved-away booking is simply no longer
"booked" and is never found.

- Evening: from ``evening_hour`` (Tehran time) until midnight, every booking of tomorrow
  made before that hour.
- Hour: every booking that starts in the next hour and was made more than an hour before
  it starts. The window reaches back ``HOUR_LATE_MINUTES`` so a missed run catches up, but
  no reminder is sent for a booking starting sooner than that.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

from sqlalchemy import ColumnElement, and_, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.booking.models import Booking, BookingStatus
from app.locale import jalali_datetime
from app.offices.models import Office
from app.sms.service import Messenger

PAGE = 500
HOUR_LATE_MINUTES = 15
EVENING_REMINDER = "reminder_evening"
HOUR_REMINDER = "reminder_hour"
"""Their messages' kinds: not sent once untrue (app.sms.tasks._life_ends)."""


def _starts_between(after: dt.datetime, until: dt.datetime) -> ColumnElement[bool]:
    """Bookings whose slot starts in (after, until], on one day or across midnight."""
    a, u = after.strftime("%H:%M"), until.strftime("%H:%M")
    if after.date() == until.date():
        return and_(Booking.date == after.date(), Booking.slot_time > a, Booking.slot_time <= u)
    return or_(
        and_(Booking.date == after.date(), Booking.slot_time > a),
        and_(Booking.date == until.date(), Booking.slot_time <= u),
    )


def _booked_an_hour_ahead(booking: Booking, tz: dt.tzinfo) -> bool:
    start = dt.datetime.combine(booking.date, dt.time.fromisoformat(booking.slot_time), tzinfo=tz)
    # SQLite gives back the service's wall time without its zone.
    created = booking.created_at if booking.created_at.tzinfo else booking.created_at.replace(tzinfo=tz)
    return created <= start - dt.timedelta(hours=1)


async def send_due(*, session: AsyncSession, messenger: Messenger, now: dt.datetime, evening_hour: int) -> int:
    """Queue every reminder due at ``now``; returns how many."""
    tz = now.tzinfo
    assert tz is not None
    sent = 0
    if now.hour >= evening_hour:
        evening = now.replace(hour=evening_hour, minute=0, second=0, microsecond=0)
        sent += await _remind(
            session,
            messenger,
            now,
            kind=EVENING_REMINDER,
            where=and_(
                Booking.date == now.date() + dt.timedelta(days=1),
                Booking.reminded_evening_at.is_(None),
                Booking.created_at < evening,
            ),
            keep=lambda _: True,
        )
    sent += await _remind(
        session,
        messenger,
        now,
        kind=HOUR_REMINDER,
        where=and_(
            _starts_between(now + dt.timedelta(minutes=60 - HOUR_LATE_MINUTES), now + dt.timedelta(minutes=60)),
            Booking.reminded_hour_at.is_(None),
        ),
        keep=lambda b: _booked_an_hour_ahead(b, tz),
    )
    return sent


async def _remind(
    session: AsyncSession,
    messenger: Messenger,
    now: dt.datetime,
    *,
    kind: str,
    where: ColumnElement[bool],
    keep: Callable[[Booking], bool],
) -> int:
    evening = kind == EVENING_REMINDER
    mark = Booking.reminded_evening_at if evening else Booking.reminded_hour_at
    lead = "فردا" if evening else "یک ساعت دیگر"
    sent, after_id = 0, 0
    while True:
        rows = await session.execute(
            select(Booking, Office.name_fa)
            .join(Office, Office.id == Booking.office_id)
            .where(Booking.status == BookingStatus.BOOKED, where, Booking.id > after_id)
            .order_by(Booking.id)
            .limit(PAGE)
        )
        page: Sequence[tuple[Booking, str]] = [(booking, name) for booking, name in rows]
        if not page:
            return sent
        if evening and messenger.clock.now().date() != now.date():
            # Past midnight, "tomorrow" is today: what is left is the hour's reminder's.
            await session.rollback()
            return sent
        after_id = page[-1][0].id
        wanted = {b.id: (b, name) for b, name in page if keep(b)}
        if wanted:
            # Compare-and-set: only the rows still unmarked, and still where they were read,
            # are ours to remind. One moved since (a closure at 20:05 moving a province's
            # bookings as this run reads them) would be told its old office and time after
            # the move's own message, and marked: its new place never reminded. Left, the
            # move having cleared its marks, it is reminded by the next run.
            still = [(b.id, b.office_id, b.date, b.slot_time) for b, _ in wanted.values()]
            ours = set(
                await session.scalars(
                    update(Booking)
                    .where(
                        tuple_(Booking.id, Booking.office_id, Booking.date, Booking.slot_time).in_(still),
                        mark.is_(None),
                        Booking.status == BookingStatus.BOOKED,
                    )
                    .values({mark: now})
                    .returning(Booking.id)
                    .execution_options(synchronize_session=False)
                )
            )
            for booking_id in sorted(ours):
                booking, office_name = wanted[booking_id]
                when = jalali_datetime(booking.date, dt.time.fromisoformat(booking.slot_time))
                messenger.queue(
                    session,
                    to=booking.mobile,
                    body=f"یادآوری نوبت: {lead}، {when}، {office_name}. کد رهگیری {booking.tracking_code}. "
                    f"برای لغو: لغو {booking.tracking_code}",
                    kind=kind,
                )
            sent += len(ours)
        await session.commit()
