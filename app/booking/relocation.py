"""Moving a booking the office can no longer honour: same office at the nearest time first,
then the least busy nearby office, the same day. Whoever cannot be placed is told so and
their booking is cancelled: never silently lost, never double-booked."""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import msgspec
from redis.exceptions import RedisError
from sqlalchemy import ColumnElement, Select, case, false, func, select, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from app.booking.models import SEAT_STATUSES, Booking, BookingStatus, Channel
from app.booking.service import BookingService
from app.booking.writer import hold_off_recounts
from app.capacity.errors import CapacityRebuilding, DayFull, NoSuchSlot, OfficeBlocked, OfficeClosed, SlotFull
from app.capacity.models import Closure
from app.capacity.plan import minute_of
from app.capacity.service import DayView, Overflow, Reserved, Seat, SeatRequest, day_for_reading
from app.db import RECORD_AWAY, RECORD_OR_REDIS_AWAY, Within, commit_outcome
from app.errors import DomainError
from app.load.service import LoadService
from app.locale import jalali_datetime
from app.offices.models import City, Office
from app.offices.service import BookableOffice

log = logging.getLogger(__name__)

NEARBY_OFFICES_TRIED = 8
PAST_SLOT = dt.timedelta(hours=1)
"""A slot of today begun this long before an office was shut (a block, a closure) is past: its
booking is left to the night's close, not moved or cancelled with an SMS. Its citizen was
served hours before without a click, or did not come: texted to book elsewhere, or moved to an
afternoon they would miss, they were told nonsense, and the absence went uncounted."""
MOVE_LEAD = dt.timedelta(minutes=30)
"""The least time a citizen moved to a slot today has to get there from the SMS: moved to the
slot ten minutes on, across town, they could not come, and were marked absent at night."""


class Relocation(msgspec.Struct, frozen=True):
    tracking_code: str
    moved: bool
    office_code: str | None = None
    time: str | None = None


class Relocator:
    def __init__(self, *, bookings: BookingService, load: LoadService) -> None:
        self.bookings = bookings
        self.capacity = bookings.capacity
        self.clock = bookings.clock
        self.load = load

    async def relocate(
        self,
        *,
        session: AsyncSession,
        bookings: Sequence[Booking],
        from_office: Office,
        same_office: bool,
        why_fa: str,
        still_wanted: Callable[[], Awaitable[bool]] | None = None,
        cancel_unplaced: bool = True,
    ) -> list[Relocation]:
        """Move each booking (or cancel it where no seat is left, unless not ``cancel_unplaced``:
        then it stays, and is not in the result), telling the citizen; all of them in one
        commit, then the old seats go back a few hundred to a trip. A booking that changed
        meanwhile (cancelled by its citizen, checked in) is left as it is and not in the result.

        ``still_wanted`` is asked once the seats are found, in the transaction that writes the
        moves, so that what it reads locked stays so until their commit (a block asks whether
        the office is still blocked; on SQLite its lock is the one write lock, not held through
        the search). False: nobody moves, the seats go back, and the result is empty.

        Done one at a time, a clerk's cut of sixteen bookings took seconds behind a rush:
        every step waits its turn on a busy event loop, and each booking took a dozen.
        The rows passed in keep their old values; the record has the new ones."""
        if not bookings:
            return []
        assert len({b.id for b in bookings}) == len(bookings), "each booking once"
        now = self.clock.now()
        places = _Places(self, session, from_office, same_office, now)
        placements: list[_Placed | None] = []
        taken: list[Seat | None] = []  # the new seats, kept apart: a rollback expires the rows
        writing = False
        # The recount the seats are taken in: one that begins while they are (a minute's job
        # moving a blocked office's two thousand bookings takes a while) counts the days again
        # from a record without the moves, and their new seats would be sold again.
        if not await self.capacity.is_built():
            raise CapacityRebuilding()
        counted = self.capacity.mark
        try:
            for booking in bookings:
                placed = await places.find(booking)
                placements.append(placed)
                taken.append(None if placed is None else placed.seat(booking.date))
            if not cancel_unplaced:
                bookings = [booking for booking, placed in zip(bookings, placements, strict=True) if placed]
                placements = [placed for placed in placements if placed]
                taken = [seat for seat in taken if seat]
                if not bookings:
                    return []
            # Committed while the counters are counted again from the record, the moves could
            # be left out of the count, their new seats sold again: asked before the first
            # write, and before the commit as the group commit asks, of Redis itself (a flag
            # a second old had let a failover or a recount by; the barrier, a commit slower
            # than the recount's wait).
            await self.capacity.confirm_ready()
            writing = True
            if still_wanted is not None and not await still_wanted():
                await session.commit()  # nothing written; a rollback would expire the caller's rows
                await self._give_back(session, [seat for seat in taken if seat is not None])
                return []
            xid = await hold_off_recounts(session)  # its id, for commit_outcome
            changed = await _record_moves(session, from_office, bookings, placements, now)
            for booking, placed in zip(bookings, placements, strict=True):
                if booking.id in changed:
                    self._tell(session, booking, placed, why_fa)
            # The counts the old seats are in before the record lets them go (see Seat).
            old_days = await self.capacity.counts({(from_office.code, b.date) for b in bookings})
            if not await self.capacity.may_commit() or self.capacity.mark != counted:  # may_commit read it
                raise CapacityRebuilding()  # the seats go back: RELEASE frees none a recount left out
        except Exception as error:
            # Nothing was written: nobody moved, so the new seats go back. Refused before the
            # first write, nothing is rolled back either (a rollback expires the caller's rows).
            if writing or not isinstance(error, CapacityRebuilding):
                await session.rollback()
            await self._give_back(session, [seat for seat in taken if seat is not None])
            raise
        # What follows the commit, worked out before it: a commit whose answer was lost is
        # asked about below, and that rolls the session back, expiring every row it holds.
        results, cancelled = [], []
        for booking, placed in zip(bookings, placements, strict=True):
            if booking.id not in changed:
                continue
            if placed is None:
                results.append(Relocation(tracking_code=booking.tracking_code, moved=False))
                cancelled.append((booking.national_id, booking.tracking_code))
            else:
                results.append(
                    Relocation(
                        tracking_code=booking.tracking_code,
                        moved=True,
                        office_code=placed.target.code,
                        time=placed.reserved.time,
                    )
                )
        # Whoever moved or was cancelled gives back the old seat; a seat taken for a booking
        # that changed meanwhile goes back instead.
        freed = [
            Seat(from_office.code, b.date, b.pool, b.slot_time, old_days[(from_office.code, b.date)])
            for b in bookings
            if b.id in changed
        ]
        freed += [seat for b, seat in zip(bookings, taken, strict=True) if seat is not None and b.id not in changed]
        # Outside the undo above: a commit whose answer was lost may have been written, and
        # then the new seats are the movers' own. The record is asked: not written, the new
        # seats go back (kept, a block's two thousand had left the offices around it full for
        # nobody until the night's recount, and the job's next try took as many again);
        # written, the old ones do, below. Unknown, every seat stays counted (never a double
        # booking) until the next rebuild.
        written = _moves_written(bookings, placements, changed, now) if changed else None
        try:
            await session.commit()
        except RECORD_AWAY:
            if written is not None:
                landed = await commit_outcome(session, xid, written)
            else:
                await session.rollback()
                landed = False
            if landed is False:
                await self._give_back(session, [seat for seat in taken if seat is not None])
            if not landed:
                if landed is None:
                    log.error("moves' commit answer lost, and the record cannot say: their seats stay counted")
                raise
            log.warning("moves' commit answer lost; the record has them")
        # The moves are recorded: what follows only tidies Redis, so its failure is logged,
        # not the clerk's error.
        for national_id, tracking_code in cancelled:
            try:
                await self.capacity.unhold(national_id=national_id, tracking_code=tracking_code)
            except RedisError:
                log.exception("a cancelled booking's hold stays until the next rebuild")
        await self._give_back(session, freed)
        await _read_again(session)
        return results

    async def _give_back(self, session: AsyncSession, seats: list[Seat]) -> None:
        try:
            await self.bookings.free_seats(session=session, seats=seats)
        except RECORD_OR_REDIS_AWAY:
            log.exception("of %d seat(s) given back, some stay counted until the next rebuild", len(seats))
            await session.rollback()  # the caller's next statement must not meet a failed transaction

    def _tell(self, session: AsyncSession, booking: Booking, placed: _Placed | None, why_fa: str) -> None:
        if placed is None:
            body = (
                f"{why_fa} متأسفانه برای نوبت {booking.tracking_code} شما جای خالی دیگری در همان روز پیدا نشد و "
                "نوبت لغو شد. لطفاً دوباره نوبت بگیرید."
            )
            self.bookings.messenger.queue(session, to=booking.mobile, body=body, kind="booking_cancelled")
            return
        target = placed.target
        when = jalali_datetime(booking.date, dt.time.fromisoformat(placed.reserved.time))
        body = f"{why_fa} نوبت {booking.tracking_code} شما به {target.name_fa} (کد {target.code})، {when} منتقل شد."
        self.bookings.messenger.queue(session, to=booking.mobile, body=body, kind="booking_moved")


async def _record_moves(
    session: AsyncSession,
    from_office: Office,
    bookings: Sequence[Booking],
    placements: Sequence[_Placed | None],
    now: dt.datetime,
) -> set[int]:
    """Move (or cancel) the rows that are still booked where they were found, a few hundred
    to a statement; the ids changed. Compare-and-set: a citizen's own cancellation or a
    check-in that landed since the rows were read wins, and its seat is not given back twice."""
    changed: set[int] = set()
    for start in range(0, len(bookings), 300):
        rows = list(zip(bookings[start : start + 300], placements[start : start + 300], strict=True))
        moves = [(b, p) for b, p in rows if p is not None]
        cancels = [b for b, p in rows if p is None]
        if moves:
            ids = {b.id: p for b, p in moves}
            statement = (
                update(Booking)
                .where(*_still_booked(from_office, [b for b, _ in moves]))
                .values(
                    office_id=case({i: p.target.id for i, p in ids.items()}, value=Booking.id),
                    slot_time=case({i: p.reserved.time for i, p in ids.items()}, value=Booking.id),
                    pool=case({i: p.target.pool for i, p in ids.items()}, value=Booking.id),
                    # Reminded again, of the new place and time.
                    reminded_evening_at=None,
                    reminded_hour_at=None,
                    moved_from_office_id=func.coalesce(Booking.moved_from_office_id, Booking.office_id),
                )
            )
            changed.update(await session.scalars(statement.returning(Booking.id), execution_options=_NO_SYNC))
        if cancels:
            statement = (
                update(Booking)
                .where(*_still_booked(from_office, cancels))
                .values(status=BookingStatus.CANCELLED, cancelled_at=now)
            )
            changed.update(await session.scalars(statement.returning(Booking.id), execution_options=_NO_SYNC))
    return changed


_NO_SYNC = {"synchronize_session": False}


async def _read_again(session: AsyncSession) -> None:
    """After a lost commit answer was asked about, which rolled the session back and expired
    every row it holds, the caller's too (its office, the rows it goes on with): each read
    again as the record has it, or let go if it is gone (a join taken back meanwhile)."""
    for row in [row for row in session.identity_map.values() if sa_inspect(row).expired_attributes]:
        try:
            await session.refresh(row)
        except (SQLAlchemyError, OSError):  # gone (InvalidRequestError), or the record away
            session.expunge(row)


def _moves_written(
    bookings: Sequence[Booking], placements: Sequence[_Placed | None], changed: set[int], now: dt.datetime
) -> Select[int]:
    """A query that finds a row only if the moves' transaction landed: one of its bookings as
    it left it (at its new office and time, or cancelled)."""
    written = [(b, p) for b, p in zip(bookings, placements, strict=True) if b.id in changed]
    # A moved one first: a cancelled one could have been cancelled by its citizen meanwhile.
    booking, placed = next(((b, p) for b, p in written if p is not None), written[0])
    if placed is None:
        return select(Booking.id).where(
            Booking.id == booking.id, Booking.status == BookingStatus.CANCELLED, Booking.cancelled_at == now
        )
    return select(Booking.id).where(
        Booking.id == booking.id, Booking.office_id == placed.target.id, Booking.slot_time == placed.reserved.time
    )


def past_slots(now: dt.datetime, shut_at: dt.datetime | None = None) -> ColumnElement[bool]:
    """The bookings a shut office leaves to the night's close (``PAST_SLOT``): today's, begun
    ``PAST_SLOT`` or more before ``now`` and, given ``shut_at`` (a block's start), before it.
    (Begun after the office was shut, a slot was never the office's to serve: moved or told.)"""
    kept_to = now - PAST_SLOT
    if kept_to.date() != now.date():
        return false()
    past = (
        (Booking.status == BookingStatus.BOOKED)
        & (Booking.date == now.date())
        & (Booking.slot_time <= kept_to.strftime("%H:%M"))
    )
    if shut_at is None:
        return past
    shut_at = shut_at.astimezone(now.tzinfo)
    return false() if shut_at.date() != now.date() else past & (Booking.slot_time < shut_at.strftime("%H:%M"))


def _not_before(now: dt.datetime, day: dt.date) -> str:
    """The time a move to ``day`` must be after (""; any): today, ``MOVE_LEAD`` from now, and
    no slot at all when that is tomorrow already."""
    if day != now.date():
        return ""
    lead_ends = now + MOVE_LEAD
    return lead_ends.strftime("%H:%M") if lead_ends.date() == day else "24:00"


def _still_booked(from_office: Office, bookings: Sequence[Booking]) -> list[ColumnElement[bool]]:
    return [
        Booking.id.in_([b.id for b in bookings]),
        Booking.office_id == from_office.id,
        Booking.status == BookingStatus.BOOKED,
        Booking.slot_time == case({b.id: b.slot_time for b in bookings}, value=Booking.id),
        Booking.pool == case({b.id: b.pool for b in bookings}, value=Booking.id),
    ]


class _Target(msgspec.Struct, frozen=True):
    id: int
    code: str
    name_fa: str
    pool: str


class _Placed(msgspec.Struct, frozen=True):
    """Where a booking goes: the office, and the seat reserved there for it."""

    target: _Target
    reserved: Reserved

    def seat(self, day: dt.date) -> Seat:
        return Seat(self.target.code, day, self.target.pool, self.reserved.time, self.reserved.counted_in)


@dataclass
class _DayRoom:
    """What an office-day can still take, counted down as a batch takes seats: each slot's own
    seats left, and under a cap each pool's room in the whole day (``day_room``; None: no cap)."""

    free: dict[tuple[str, str], int]
    under_cap: dict[str, int] | None

    @classmethod
    def of(cls, view: DayView) -> _DayRoom:
        if view.status == "blocked":
            return cls({}, None)
        free = {(s.pool, s.time): s.seats - s.used for s in view.slots if s.seats > s.used}
        return cls(free, view.rooms() if view.cap_percent < 100 else None)

    def times(self, pool: str, giving_back: int) -> list[str]:
        """The pool's slots with a seat left, none when the cap leaves the day no room (with
        ``giving_back`` seats more: see SeatRequest)."""
        if self.under_cap is not None and self.under_cap.get(pool, 0) + giving_back <= 0:
            return []
        return [time for (p, time), left in self.free.items() if p == pool and left > 0]

    def take(self, pool: str, time: str) -> None:
        self.free[(pool, time)] -= 1
        if self.under_cap is not None:
            self.under_cap[pool] -= 1


class _Places:
    """Where one batch of bookings can go: each office and day is looked up once for the
    batch, and its free seats counted down as the batch takes them."""

    def __init__(
        self, relocator: Relocator, session: AsyncSession, from_office: Office, same_office: bool, now: dt.datetime
    ) -> None:
        self.relocator = relocator
        self.session = session
        self.from_office = from_office
        self.same_office = same_office
        self.now = now
        self._nearby: dict[tuple[str, dt.date], list[str]] = {}
        self._offices: dict[tuple[str, str], BookableOffice | None] = {}
        self._rooms: dict[tuple[str, dt.date], _DayRoom] = {}
        self._closures: dict[dt.date, set[int | None]] = {}  # the provinces closed each day (None: all)
        self._placed: Counter[tuple[dt.date, str]] = Counter()  # by the day and pool they leave

    async def find(self, booking: Booking) -> _Placed | None:
        """A seat for the booking: the same office at the nearest time first (when asked),
        then the least busy nearby office, the same day."""
        placed = await self._find(booking)
        if placed is not None:
            self._placed[(booking.date, booking.pool)] += 1
        return placed

    async def _find(self, booking: Booking) -> _Placed | None:
        not_before = _not_before(self.now, booking.date)
        if self.same_office:
            placed = await self._place(booking, self.from_office.code, not_before)
            if placed is not None:
                return placed
        for office_code in await self._nearby_codes(booking):
            placed = await self._place(booking, office_code, not_before)
            if placed is not None:
                return placed
        return None

    async def _nearby_codes(self, booking: Booking) -> list[str]:
        key = (booking.service_code, booking.date)
        if key not in self._nearby:
            nearby = await self.relocator.load.nearby(
                sessions=Within(self.session),
                service_code=booking.service_code,
                day=booking.date,
                lat=self.from_office.lat,
                lon=self.from_office.lon,
                city=None,
                limit=NEARBY_OFFICES_TRIED,
            )
            self._nearby[key] = [o.code for o in nearby.offices if o.code != self.from_office.code]
        return self._nearby[key]

    async def _office(self, office_code: str, service_code: str) -> BookableOffice | None:
        key = (office_code, service_code)
        if key not in self._offices:
            try:
                self._offices[key] = await self.relocator.bookings.offices.bookable(
                    office_code=office_code, service_code=service_code
                )
            except DomainError:
                self._offices[key] = None
        return self._offices[key]

    async def _room(self, office_code: str, day: dt.date) -> _DayRoom:
        key = (office_code, day)
        if key not in self._rooms:
            if await self._closed(office_code, day):
                self._rooms[key] = _DayRoom({}, None)
                return self._rooms[key]
            capacity = self.relocator.capacity
            view = await day_for_reading(capacity, sessions=Within(self.session), office_code=office_code, day=day)
            self._rooms[key] = _DayRoom.of(view)
        return self._rooms[key]

    async def _closed(self, office_code: str, day: dt.date) -> bool:
        """Whether the record closes the office that day. Redis may still sell its seats: a
        closure posted while another of the day moves its citizens (they share one lock) takes
        them out only after, and meanwhile those moves had sent citizens there, to be moved
        again, or cancelled, by the minute's job: two contradictory SMS each."""
        if day not in self._closures:
            rows = await self.session.execute(select(Closure.province_id).where(Closure.date == day))
            self._closures[day] = {province for (province,) in rows}
        closed = self._closures[day]
        if not closed or None in closed:
            return bool(closed)
        province = await self.session.scalar(
            select(City.province_id).join(Office, Office.city_id == City.id).where(Office.code == office_code)
        )
        return province in closed

    async def _place(self, booking: Booking, office_code: str, not_before: str) -> _Placed | None:
        """Reserve a seat at the office, at the free slot nearest the booking's own time."""
        office = await self._office(office_code, booking.service_code)
        if office is None:
            return None
        # At its own office, the seats this batch's moves leave in the pool are given back once
        # recorded: room under a cap, this booking's own among them.
        giving_back = 0
        if office.code == self.from_office.code:
            giving_back = self._placed[(booking.date, office.pool)] + (booking.pool == office.pool)
        room = await self._room(office.code, booking.date)
        times = [time for time in room.times(office.pool, giving_back) if time > not_before]
        times.sort(key=lambda t: (abs(minute_of(t) - minute_of(booking.slot_time)), t))
        for time in times:
            try:
                reserved = await self.relocator.capacity.reserve(
                    SeatRequest(
                        office_code=office.code,
                        day=booking.date,
                        pool=office.pool,
                        time=time,
                        not_before=not_before or None,
                        tracking_code=booking.tracking_code,
                        # Moved by its own office, a booking keeps a seat there ahead of the
                        # line; at another office it is new there, and the line comes first.
                        ahead_of_waitlist=office.code == self.from_office.code,
                        giving_back=giving_back,
                    )
                )
            except (SlotFull, NoSuchSlot):
                room.free[(office.pool, time)] = 0
                continue
            except (OfficeBlocked, OfficeClosed, DayFull):
                room.free.clear()
                return None
            if reserved is not None:
                room.take(office.pool, time)
                target = _Target(id=office.id, code=office.code, name_fa=office.name_fa, pool=office.pool)
                return _Placed(target, reserved)
        return None


async def overflow_bookings(session: AsyncSession, *, office_id: int, overflow: Sequence[Overflow]) -> list[Booking]:
    """The bookings to move out of an office's over-full slots: in each, the most recently
    made go first, walk-ins last (they are in the room; the newest of the day, they had been
    the first sent to another office). A slot is over by what Redis counts, but never by more
    than the record holds: a seat counted with no holder (a cancellation between its commit
    and its release, a release that failed) must not push out a citizen who fits."""
    seats = {(o.day, o.pool, o.time): (o.seats, o.booked) for o in overflow}
    rows = await session.scalars(
        select(Booking)
        .where(
            Booking.office_id == office_id,
            Booking.date.in_({o.day for o in overflow}),
            Booking.slot_time.in_({o.time for o in overflow}),
            Booking.status.in_(SEAT_STATUSES),
        )
        .order_by(Booking.created_at.desc(), Booking.id.desc())
        # A row moved earlier in this session is read as the record has it now.
        .execution_options(populate_existing=True)
    )
    by_slot: dict[tuple[dt.date, str, str], list[Booking]] = {slot: [] for slot in seats}
    for booking in rows:
        slot = (booking.date, booking.pool, booking.slot_time)
        if slot in by_slot:
            by_slot[slot].append(booking)
    chosen = []
    for slot, holders in by_slot.items():
        planned, counted = seats[slot]
        excess = min(counted, len(holders)) - planned
        movable = sorted(
            (b for b in holders if b.status == BookingStatus.BOOKED), key=lambda b: b.channel == Channel.WALK_IN
        )  # stable: newest first within each
        chosen += movable[: max(excess, 0)]
    return chosen
