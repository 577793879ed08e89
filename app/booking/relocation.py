"""Moving a booking the office can no longer honour: same office at the nearest time first,
then the least busy nearby office, the same day. Whoever cannot be placed is told so and
their booking is cancelled: never silently lost, never double-booked."""

from __future__ import annotations

import datetime as dt
import logging

import msgspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.booking.models import Booking, BookingStatus
from app.booking.service import BookingService
from app.capacity.errors import DayFull, NoSuchSlot, OfficeBlocked, OfficeClosed, SlotFull
from app.capacity.service import SeatRequest, day_for_reading
from app.errors import DomainError
from app.load.service import LoadService
from app.locale import jalali_datetime
from app.offices.models import Office
from app.offices.service import bookable_office

log = logging.getLogger(__name__)

NEARBY_OFFICES_TRIED = 8


class Relocation(msgspec.Struct, frozen=True):
    tracking_code: str
    moved: bool
    office_code: str | None = None
    time: str | None = None


def _minutes(hhmm: str) -> int:
    return int(hhmm[:2]) * 60 + int(hhmm[3:])


class Relocator:
    def __init__(self, *, bookings: BookingService, load: LoadService) -> None:
        self.bookings = bookings
        self.capacity = bookings.capacity
        self.clock = bookings.clock
        self.load = load

    async def relocate(
        self, *, session: AsyncSession, booking: Booking, from_office: Office, same_office: bool, why_fa: str
    ) -> Relocation:
        now = self.clock.now()
        not_before = now.strftime("%H:%M") if booking.date == now.date() else ""
        targets = [from_office.code] if same_office else []
        nearby = await self.load.nearby(
            session=session,
            service_code=booking.service_code,
            day=booking.date,
            lat=from_office.lat,
            lon=from_office.lon,
            city=None,
            limit=NEARBY_OFFICES_TRIED,
        )
        targets += [office.code for office in nearby.offices if office.code != from_office.code]
        old_time, old_pool = booking.slot_time, booking.pool
        for office_code in targets:
            placed = await self._place(session, booking, office_code, not_before)
            if placed is None:
                continue
            target, time = placed
            booking.office_id, booking.slot_time, booking.pool = target.id, time, target.pool
            when = jalali_datetime(booking.date, dt.time.fromisoformat(time))
            self.bookings.messenger.queue(
                session,
                to=booking.mobile,
                body=f"{why_fa} نوبت {booking.tracking_code} شما به {target.name_fa} (کد {target.code})، {when} منتقل شد.",
                kind="booking_moved",
            )
            # Reminded again, of the new place and time.
            booking.reminded_evening_at = booking.reminded_hour_at = None
            await session.commit()
            await self.bookings.free_seat(
                session=session, office_code=from_office.code, day=booking.date, pool=old_pool, time=old_time
            )
            return Relocation(tracking_code=booking.tracking_code, moved=True, office_code=target.code, time=time)

        booking.status = BookingStatus.CANCELLED
        booking.cancelled_at = now
        self.bookings.messenger.queue(
            session,
            to=booking.mobile,
            body=f"{why_fa} متأسفانه برای نوبت {booking.tracking_code} شما جای خالی دیگری در همان روز پیدا نشد و "
            "نوبت لغو شد. لطفاً دوباره نوبت بگیرید.",
            kind="booking_cancelled",
        )
        await session.commit()
        await self.bookings.free_seat(
            session=session, office_code=from_office.code, day=booking.date, pool=old_pool, time=old_time
        )
        await self.capacity.unhold(national_id=booking.national_id, tracking_code=booking.tracking_code)
        return Relocation(tracking_code=booking.tracking_code, moved=False)

    async def _place(
        self, session: AsyncSession, booking: Booking, office_code: str, not_before: str
    ) -> tuple[_Target, str] | None:
        """Reserve a seat at the office, at the free slot nearest the booking's own time."""
        try:
            office = await bookable_office(session=session, office_code=office_code, service_code=booking.service_code)
        except DomainError:
            return None
        view = await day_for_reading(self.capacity, session=session, office_code=office.code, day=booking.date)
        if view.status == "blocked":
            return None
        free = [s.time for s in view.slots if s.pool == office.pool and s.free > 0 and s.time > not_before]
        free.sort(key=lambda t: (abs(_minutes(t) - _minutes(booking.slot_time)), t))
        for time in free:
            try:
                reserved = await self.capacity.reserve(
                    SeatRequest(
                        office_code=office.code,
                        day=booking.date,
                        pool=office.pool,
                        time=time,
                        not_before=not_before or None,
                        tracking_code=booking.tracking_code,
                    )
                )
            except (SlotFull, NoSuchSlot):
                continue
            except (OfficeBlocked, OfficeClosed, DayFull):
                return None
            if reserved is not None:
                return _Target(id=office.id, code=office.code, name_fa=office.name_fa, pool=office.pool), reserved.time
        return None


class _Target(msgspec.Struct, frozen=True):
    id: int
    code: str
    name_fa: str
    pool: str


async def overflow_bookings(
    session: AsyncSession, *, office_id: int, day: dt.date, pool: str, time: str, count: int
) -> list[Booking]:
    """The bookings to move out of an over-full slot: the most recently made go first."""
    rows = await session.scalars(
        select(Booking)
        .where(
            Booking.office_id == office_id,
            Booking.date == day,
            Booking.pool == pool,
            Booking.slot_time == time,
            Booking.status == BookingStatus.BOOKED,
        )
        .order_by(Booking.created_at.desc(), Booking.id.desc())
        .limit(count)
    )
    return list(rows)
