"""The regulator's national levers on capacity: crowd caps and ad-hoc closures."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import TypeVarTuple

from redis.exceptions import RedisError
from sqlalchemy import ColumnElement, Select, delete, func, literal, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from app.booking.models import Booking, BookingStatus
from app.booking.relocation import PAST_SLOT, past_slots
from app.booking.writer import commit_unless_recounting
from app.capacity import crowd_caps, keys
from app.capacity.crowd_caps import CrowdCapOut
from app.capacity.errors import CapacityRebuilding, ClosuresChanging
from app.capacity.models import Closure, opened_by_own_plan
from app.capacity.service import Overflow
from app.console.schemas import MovedBooking
from app.console.service import Console
from app.errors import DomainError, InvalidInput, NotFound, ServiceUnavailable
from app.locale import check_text, jalali_date, parse_date
from app.offices.models import City, Office, Province
from app.redis import renewed_lock
from app.regulator.schemas import ClosureIn, ClosureOut, CrowdCapIn
from app.staff.models import StaffRole
from app.staff.service import StaffPrincipal, audit, require_role

log = logging.getLogger(__name__)
Columns = TypeVarTuple("Columns")

CLOSURE_MOVES_LOCK = f"{keys.NAMESPACE}:closure-moves"
CLOSURE_REQUEST_SECONDS = 60
"""A closure noted this recently is its request's to apply: the job would only wait on its lock."""
MOVES_IN_REQUEST = 2_000
"""Bookings a closure's request moves itself at most (an office's busy day, as a block moves
its own). More (Tehran closed for a day's air: some hundred thousand), and its seats come out
in the request while the minute's job moves them: in the request, the regulator's answer
waited many minutes (past any balancer's timeout, retried as a second closure) and a list of
every booking moved was held by an instance serving citizens."""


class ClosureBusy(ServiceUnavailable):
    code = "closure_busy"
    message_fa = "جابه‌جایی نوبت‌های این روز در جریان است. یک دقیقه بعد دوباره تلاش کنید."
    message_en = "The bookings of this day are being moved. Try again in a minute."

    def __init__(self) -> None:
        super().__init__(retry_after=30)


class ClosureNotFound(NotFound):
    code = "closure_not_found"
    message_fa = "چنین تعطیلی ثبت نشده است."
    message_en = "No such closure."


class ClosureExists(DomainError):
    code = "closure_exists"
    status = 409
    message_fa = "این روز برای همین استان (یا سراسر کشور) و به همین دلیل پیش‌تر تعطیل شده است."
    message_en = "This day is closed for this province (or the whole country), for this reason, already."


class Regulator:
    def __init__(self, *, console: Console) -> None:
        self.console = console
        self.capacity = console.capacity
        self.clock = console.clock

    async def add_cap(self, *, session: AsyncSession, staff: StaffPrincipal, data: CrowdCapIn) -> CrowdCapOut:
        require_role(staff, StaffRole.REGULATOR)
        # Written during a recount, a cap could be counted over by days read before it.
        self.capacity.require_ready()

        async def record(cap: CrowdCapOut) -> None:
            await audit(
                session, actor=staff, action="crowd_cap.add", target=str(cap.id), office_id=None, before=None,
                after=cap, at=self.clock.now(),
            )  # fmt: skip

        return await crowd_caps.add(
            session=session,
            capacity=self.capacity,
            today=self.clock.today(),
            province_code=data.province_code,
            starts_on=parse_date(data.starts_on, "starts_on"),
            ends_on=parse_date(data.ends_on, "ends_on"),
            percent=data.percent,
            reason=data.reason,
            created_by=staff.username,
            record=record,
            # At 0% (or a share that rounds a small day to no seat) no line of those days moves:
            # ended once the counters have the cap, before its note is let go (failed, the
            # minute's job does it; ``finish_caps``).
            then=partial(self._end_shut_lines, session) if data.percent < 100 else None,
        )

    async def lift_cap(self, *, session: AsyncSession, staff: StaffPrincipal, cap_id: int) -> CrowdCapOut:
        require_role(staff, StaffRole.REGULATOR)
        self.capacity.require_ready()

        async def record(cap: CrowdCapOut) -> None:
            await audit(
                session, actor=staff, action="crowd_cap.lift", target=str(cap_id), office_id=None, before=None,
                after=cap, at=self.clock.now(),
            )  # fmt: skip

        async def fill(office_codes: set[str] | None) -> None:
            # The cap's own offices' lines, asked for by name (a SCAN of the whole keyspace, for
            # a province's lift, had taken seconds in a rush). Pending, the minute's job fills them.
            await self.console.bookings.fill_waitlists(session=session, office_codes=office_codes)

        return await crowd_caps.lift(
            session=session,
            capacity=self.capacity,
            today=self.clock.today(),
            cap_id=cap_id,
            now=self.clock.now(),
            record=record,
            then=fill,
        )

    async def finish_caps(self, *, session: AsyncSession) -> int:
        """The minute's job for the caps whose request could not tell the counters; a lift
        gives the lines the room it made (while anyone is in line, nobody else takes it)."""

        async def fill(office_codes: set[str] | None) -> None:
            await self.console.bookings.fill_waitlists(session=session, office_codes=office_codes)
            await self._end_shut_lines(session, office_codes)  # a cap that shuts a day: its lines end

        return await crowd_caps.finish(session=session, capacity=self.capacity, today=self.clock.today(), then=fill)

    async def _end_shut_lines(self, session: AsyncSession, office_codes: set[str] | None) -> None:
        # Not "by the regulator's order": the lines of these offices that can never move are
        # ended here whatever shut their day (a clerk's closing it, the office's restriction),
        # each told a reason true of them all.
        await self.console.bookings.end_shut_lines(
            session=session, office_codes=office_codes, why_fa="به دلیل توقف نوبت‌دهی آن روز،"
        )

    async def caps(self, *, session: AsyncSession, staff: StaffPrincipal) -> list[CrowdCapOut]:
        require_role(staff, StaffRole.REGULATOR, StaffRole.GUILD)
        return await crowd_caps.list_caps(session=session)

    async def close(self, *, session: AsyncSession, staff: StaffPrincipal, data: ClosureIn) -> ClosureOut:
        """Close every office of a province (or the country) on a date; its bookings are moved
        to an open office nearby where one has room, or cancelled and the citizen told."""
        require_role(staff, StaffRole.REGULATOR)
        # Recorded during a recount, the closure could be counted over (its offices' seats
        # back) and its moves refused half-way, leaving citizens booked at closed offices.
        self.capacity.require_ready()
        day = parse_date(data.date)
        province_code = crowd_caps.province_code_of(data.province_code)  # None: the whole country
        if province_code == "":
            # Read as the country, a blank field (a form, a script's empty variable) had closed
            # every office in Iran and moved every booking of the day.
            raise InvalidInput(
                "province_code",
                "Give a province code, or none (null) to close the whole country.",
                detail_fa="کد استان را بنویسید (برای تعطیلی سراسری، آن را نفرستید).",
            )
        today = self.clock.today()
        # A decree for a day weeks away (a holiday declared, a mourning) had to wait until the
        # day came within the horizon, and someone to remember it then.
        self.capacity.check_plannable(day, today)
        far = day not in self.capacity.horizon(today)
        if not check_text(
            data.reason, "reason", max_length=crowd_caps.REASON_MAX, multiline=True, label_fa="دلیل"
        ).strip():
            raise InvalidInput("reason", "Give the reason.", detail_fa="دلیل را بنویسید.")
        province_id = None
        if province_code:
            province_id = await session.scalar(select(Province.id).where(Province.code == province_code))
            if province_id is None:
                raise InvalidInput(
                    "province_code", "No province has this code.", detail_fa="استانی با این کد وجود ندارد."
                )
        # A retry of a closure whose answer was slow (a national one moves a day's bookings
        # before it answers) recorded it twice, and reopening it then left the day shut by
        # the copy. Another order for the same day (another reason) is a closure of its own.
        reason = data.reason.strip()
        same = await session.scalar(select(Closure.id).where(*_same_closure(day, province_id, reason)).limit(1))
        if same is not None:
            raise ClosureExists(closure_id=same)
        closure = Closure(date=day, province_id=province_id, reason=reason, created_by=staff.username)
        session.add(closure)
        try:
            await session.flush()
        except IntegrityError:  # the same order, posted at the same instant, recorded first?
            await session.rollback()
            same = await session.scalar(select(Closure.id).where(*_same_closure(day, province_id, reason)).limit(1))
            if same is None:  # another fault (an id sequence behind, say): not "closed already"
                raise
            raise ClosureExists(closure_id=same) from None
        await audit(
            session, actor=staff, action="closure.add", target=str(closure.id), office_id=None, before=None,
            after={"date": day.isoformat(), "province_code": province_code, "reason": closure.reason},
            at=self.clock.now(),
        )  # fmt: skip
        if far:
            # Beyond the horizon: nobody is booked that day and it has no counters yet. The day
            # is written closed as it enters the horizon (the calendar has the closure)...
            await session.commit()
            recorded = ClosureOut(
                id=closure.id, date=day.isoformat(), province_code=province_code, reason=closure.reason,
                created_by=closure.created_by,
            )  # fmt: skip
            if day not in self.capacity.horizon(self.clock.today()):
                return recorded
            # ...unless it entered it as this request ran (posted at midnight): written open by
            # the night's new day from the record without it, it is closed here, and noted for
            # the minute's job should that fail.
            change = (await self.capacity.apply_later(str(recorded.id), noted_in=keys.CLOSURES_TO_APPLY)).change
            await self._close_in_request(session, recorded, province_id, day, change, await self.capacity.rebuilt_at())
            return recorded
        # Noted before the commit: if the seats cannot come out below, the minute's job takes
        # them out even where nobody is booked yet (it had looked only for bookings to move,
        # and the closed offices went on taking bookings until one came).
        change = (await self.capacity.apply_later(str(closure.id), noted_in=keys.CLOSURES_TO_APPLY)).change
        counted = await self.capacity.rebuilt_at()
        # Refused during a recount: one that read the record before would open the offices
        # again, and they sold seats until the minute's job closed them once more.
        await commit_unless_recounting(session, self.capacity.may_commit)
        recorded = ClosureOut(  # before the moves, whose rollback (if any) expires the row
            id=closure.id,
            date=day.isoformat(),
            province_code=province_code,
            reason=closure.reason,
            created_by=closure.created_by,
        )
        await self._close_in_request(session, recorded, province_id, day, change, counted)
        return recorded

    async def _close_in_request(
        self,
        session: AsyncSession,
        recorded: ClosureOut,
        province_id: int | None,
        day: dt.date,
        change: str,
        counted: str | None,
    ) -> None:
        """A recorded closure's seats out and its bookings moved, as its request can: said in
        ``recorded`` (``moved``, or ``moves_pending`` for the minute's job, whose note is kept
        also when a recount began since ``counted`` was read)."""
        # Its request waits a few seconds for the day's lock (another closure of the day, or a
        # reopen, holding it): the job would apply it a minute or more later, its offices selling
        # seats meanwhile.
        moved = await self._close_offices(
            session, recorded.id, province_id, day, recorded.reason, tries=25, moves_up_to=MOVES_IN_REQUEST
        )
        if moved is None:
            recorded.moves_pending = True
            return
        recorded.moved = moved
        if not await self._recounted_since(counted):
            await self._closed(recorded.id, change)

    async def _recounted_since(self, counted: str | None) -> bool:
        """Whether a recount began since ``counted`` was read (or Redis cannot say): one that
        read the record before the closure's commit opens its offices again after the moves
        above, so the closure stays noted, for the minute's job once the recount is done."""
        try:
            return counted is None or await self.capacity.rebuilt_at() != counted
        except RedisError:
            return True

    async def finish_closures(self, *, session: AsyncSession) -> int:
        """Move the bookings still at offices a closure closed: those its request could not
        move (a recount began, the record or Redis away, the process stopped half-way). Run
        every minute (workers.cron). Without it they would stay booked at a closed office,
        and the citizens would learn it at its door. Then the official holidays' changes
        (``_follow_holidays``)."""
        if not await self.capacity.is_built():
            return 0  # paused for a recount: the next run
        horizon = self.capacity.horizon(self.clock.today())
        closures = (
            await session.execute(
                select(Closure.id, Closure.date, Closure.province_id, Closure.reason).where(Closure.date.in_(horizon))
            )
        ).all()
        noted = await self.capacity.to_apply(
            older_than=CLOSURE_REQUEST_SECONDS, noted_in=keys.CLOSURES_TO_APPLY, ids=True
        )
        for gone in noted.keys() - {str(closure_id) for closure_id, *_ in closures}:  # reopened, or past
            await self._closed(int(gone), noted[gone])
        done = 0
        past = past_slots(self.clock.now())
        for closure_id, day, province_id, reason in closures:
            if str(closure_id) not in noted:
                # Not the slots a closure of today keeps (begun over an hour before): left for
                # the night, they had the whole closure run again every minute until midnight.
                booked = select(Booking.office_id).where(
                    Booking.date == day,
                    Booking.status.in_((BookingStatus.BOOKED, BookingStatus.WAITLISTED)),
                    ~past,
                )
                left = _in_province(select(Office.code).where(Office.id.in_(booked)), province_id).limit(1)
                if await session.scalar(left) is None:
                    continue
            try:
                moved = await self._close_offices(session, closure_id, province_id, day, reason)
            except Exception:  # one closure's failure must not keep the others waiting
                await session.rollback()
                log.exception("the bookings left at offices closed on %s wait for the next run", day)
                continue
            if moved is not None and str(closure_id) in noted:
                await self._closed(closure_id, noted[str(closure_id)])
            done += len(moved or [])
        return done + await self._follow_holidays(session)

    async def _follow_holidays(self, session: AsyncSession) -> int:
        """Official holidays are closures nobody records: the calendar changes with a release
        (the `holidays` package's estimate of a lunar holiday corrected) or with the setting
        (NOBAT_OFFICIAL_HOLIDAYS), not by a request. A day become one is shut at every office
        no override opens, its bookings moved or cancelled and told, as a closure's; a day no
        longer one opens. Left to the night's recount, a new holiday's bookings stood, sold
        until then, and their citizens found the office shut and were counted absent.
        The bookings moved or cancelled."""
        changed = await self.capacity.holidays_changed(self.clock.today())
        done, complete = 0, True
        past = past_slots(self.clock.now())
        for day in changed.horizon:
            if day in changed.removed:
                work = partial(self._open_after_holiday, session, day)
            elif day in changed.added:
                work = partial(self._shut_holiday, session, day)
            elif day in changed.holidays:
                # What a run before could not move (a booking on its way to the record then).
                left = _waiting_on(day, BookingStatus.BOOKED).where(~past, _not_opened(day)).limit(1)
                if (await session.execute(left)).first() is None:
                    continue
                work = partial(self._shut_holiday, session, day)
            else:
                continue
            try:
                moved = await self._under_day_lock(session, day, work)
            except Exception:  # one day's failure must not keep the others waiting
                await session.rollback()
                log.exception("the holiday change of %s waits for the next run", day)
                moved = None
            complete = complete and moved is not None
            done += len(moved or [])
        if complete:
            await self.capacity.holidays_followed(changed)
        return done

    async def _shut_holiday(self, session: AsyncSession, day: dt.date) -> list[MovedBooking]:
        why_fa = f"به دلیل تعطیل رسمی {jalali_date(day)}،"
        line = _waiting_on(day).where(_not_opened(day))
        return await self._shut(session, await _offices_closed(session, None), day, why_fa, line)

    async def _open_after_holiday(self, session: AsyncSession, day: dt.date) -> list[MovedBooking]:
        """Write a day that is no longer an official holiday from the record's calendar."""
        codes = await _offices_closed(session, None)
        await self.capacity.closures_changed()
        await self.capacity.replan(session=session, office_codes=codes, days=[day], apply=True)
        return []

    async def _closed(self, closure_id: int, change: str) -> None:
        """The closure's seats are out of Redis and its bookings moved: forget its note."""
        try:
            await self.capacity.applied(str(closure_id), change, noted_in=keys.CLOSURES_TO_APPLY)
        except RedisError:  # the job does it again, to no harm
            log.warning("closure %d stays noted for the next job", closure_id, exc_info=True)

    async def _close_offices(
        self,
        session: AsyncSession,
        closure_id: int,
        province_id: int | None,
        day: dt.date,
        reason: str,
        *,
        tries: int = 1,
        moves_up_to: int | None = None,
    ) -> list[MovedBooking] | None:
        """Under the day's lock (waiting up to ``tries`` x 0.2 s for it), take a recorded
        closure's seats out of the counters of every office it closes (not only those with
        bookings left: one whose seats never left Redis, the request having failed before,
        would take the moved citizens), move their bookings and cancel the places in line
        there (a day with no seats promotes nobody). Two of these at once (a closure's
        request, the minute's job) would each take seats the other then finds gone, and cancel
        citizens who had somewhere to go; one beside a reopen could close again in Redis a day
        the record has open. Nothing is done when the lock stays held, or a recount begins
        (which counts the closure in): the job does it within a minute. None then: not "nobody
        moved", which is what an empty list says. With more than ``moves_up_to`` bookings
        to move, only the seats come out: None too, the moves the job's."""

        async def close() -> list[MovedBooking] | None:
            if await session.get(Closure, closure_id, populate_existing=True) is None:
                return []  # reopened meanwhile: nothing to close
            codes = await _offices_closed(session, province_id)
            if moves_up_to is not None:
                past = past_slots(self.clock.now())  # kept for the night, not moved
                if await _bookings_on(session, day, province_id, ~past, moves_up_to + 1) > moves_up_to:
                    await self._shut_seats(session, codes, day)
                    return None
            line = _in_province(_waiting_on(day), province_id)
            return await self._shut(session, codes, day, f"به دلیل تعطیلی {jalali_date(day)} ({reason})،", line)

        async def seats_only() -> None:
            if await session.get(Closure, closure_id, populate_existing=True) is not None:
                await self._shut_seats(session, await _offices_closed(session, province_id), day)

        # The day's lock held by the job moving another closure's bookings (a province's can
        # take it for minutes): a request's seats come out all the same, or its offices sold
        # seats until that job had ended. Not its moves, which meet the other's.
        return await self._under_day_lock(
            session, day, close, tries=tries, meanwhile=seats_only if moves_up_to is not None else None
        )

    async def _under_day_lock(
        self,
        session: AsyncSession,
        day: dt.date,
        work: Callable[[], Awaitable[list[MovedBooking] | None]],
        *,
        tries: int = 1,
        meanwhile: Callable[[], Awaitable[None]] | None = None,
    ) -> list[MovedBooking] | None:
        """``work`` on a shut day's offices, under the day's lock (else ``meanwhile``, if
        given); None when it could not be done now (the lock held, a recount begun, Redis or
        the record away): the job's next run."""
        try:
            async with self._day_lock(day, tries=tries) as held:
                if held:
                    return await work()
                if meanwhile is not None:
                    await meanwhile()
                return None
        except (CapacityRebuilding, ClosuresChanging, RedisError, SQLAlchemyError, OSError):
            # The closure is recorded: a 503 now would have the regulator record it again.
            # Its seats come out and its bookings move by the minute's job, once the recount
            # is done or Redis and the record answer again.
            await session.rollback()
            log.warning("offices closed on %s: their bookings move by the next job", day, exc_info=True)
            return None

    async def _shut(
        self,
        session: AsyncSession,
        codes: list[str],
        day: dt.date,
        why_fa: str,
        line: Select[Booking, str],
    ) -> list[MovedBooking]:
        """Write the day of ``codes`` from the record's calendar, which shuts it, move the
        bookings it leaves no room for, and cancel the places in ``line`` (a day with no seats
        promotes nobody)."""
        overflow, begun_by = await self._shut_seats(session, codes, day)
        # What is left over (a booking on its way to the record) the minute's job moves
        # (``finish_closures``).
        moved, _ = await self.console.move_all(session, codes, [day], overflow, {}, why_fa=why_fa, begun_by=begun_by)
        # Left in line, they were told nothing, kept from booking that day elsewhere (a place
        # in line counts against the citizen's limits), and cancelled at midnight without a word.
        rows = [(booking, code) for booking, code in await session.execute(line)]
        cancelled = await self.console.bookings.cancel_seatless(
            session, rows, now=self.clock.now(), why_fa=why_fa, advice_fa="لطفاً برای روز دیگری نوبت بگیرید."
        )
        return moved + [MovedBooking(b.tracking_code, moved=False, office_code=None, slot=None) for b in cancelled]

    async def _shut_seats(
        self, session: AsyncSession, codes: list[str], day: dt.date
    ) -> tuple[list[Overflow], dt.datetime]:
        """Write the day of ``codes`` from the record's calendar, which shuts it: the slots
        over their seats now, and the time before which a slot of today is kept as it was."""
        await self.capacity.closures_changed()  # a clerk's replan under way reads it again
        # Today's slots begun over an hour before keep their seats and bookings: the night's
        # close cancels those, without a penalty (``PAST_SLOT``; ``past_slots``).
        begun_by = self.clock.now() - PAST_SLOT
        overflow = await self.capacity.replan(
            session=session, office_codes=codes, days=[day], apply=True, begun_by=begun_by
        )
        return overflow, begun_by

    def _day_lock(self, day: dt.date, *, tries: int = 1) -> AbstractAsyncContextManager[bool]:
        """The lock of the closures of a day: their moves, and a reopen."""
        lock = f"{CLOSURE_MOVES_LOCK}:{day.isoformat()}"
        return renewed_lock(self.capacity.redis, lock, uuid.uuid4().hex, seconds=30, tries=tries)

    async def closures(self, *, session: AsyncSession, staff: StaffPrincipal) -> list[ClosureOut]:
        require_role(staff, StaffRole.REGULATOR, StaffRole.GUILD)
        rows = await session.execute(
            select(Closure, Province.code)
            .outerjoin(Province, Province.id == Closure.province_id)
            .order_by(Closure.date, Closure.id)
        )
        return [
            ClosureOut(id=c.id, date=c.date.isoformat(), province_code=code, reason=c.reason, created_by=c.created_by)
            for c, code in rows
        ]

    async def reopen(self, *, session: AsyncSession, staff: StaffPrincipal, closure_id: int) -> None:
        """Remove a closure, its offices' seats back in Redis before the removal commits, under
        the day's lock (a closure's moves running beside it could close them again). Committed
        first, a Redis error had left the offices closed in Redis with nothing in the record
        to say so, and the regulator's retry found no closure. Now an error removes nothing,
        and the minute's job closes again the offices opened before it."""
        require_role(staff, StaffRole.REGULATOR)
        # As for a closure: a recount that read the record before the commit would close them again.
        self.capacity.require_ready()
        closure = await session.get(Closure, closure_id)
        if closure is None:
            raise ClosureNotFound()
        day, province_id = closure.date, closure.province_id
        before = {"date": day.isoformat(), "reason": closure.reason}

        async def remove() -> None:
            removed = await session.execute(delete(Closure).where(Closure.id == closure_id))
            if removed.rowcount == 0:  # type: ignore[attr-defined]
                raise ClosureNotFound()  # removed meanwhile, by another request: it opened them too
            await audit(
                session, actor=staff, action="closure.remove", target=str(closure_id), office_id=None,
                before=before, after=None, at=self.clock.now(),
            )  # fmt: skip

        if day not in self.capacity.horizon(self.clock.today()):  # past: no counters to open
            await remove()
            await session.commit()
            return
        async with self._day_lock(day) as held:
            if not held:  # its bookings are being moved this moment
                raise ClosureBusy()
            # Noted first: if Redis fails part-way, the offices opened already would take
            # bookings with the closure still recorded; the job closes them again.
            change = (await self.capacity.apply_later(str(closure_id), noted_in=keys.CLOSURES_TO_APPLY)).change
            codes = await _offices_closed(session, province_id)
            calendar = await self.capacity.calendar(session, first=day, last=day, without_closure=closure_id)
            await self.capacity.replan(session=session, office_codes=codes, days=[day], apply=True, calendar=calendar)
            await remove()
            # A recount begun meanwhile may have read the closure, and close the offices again
            # in Redis with none in the record to say so: the removal waits for it, or is
            # refused (the note kept: the job writes the day from the record after it).
            await commit_unless_recounting(session, self.capacity.may_commit)
            await self._replan_reopened(session, codes, day)
            await self._closed(closure_id, change)
        # The reopened offices' lines (all of them by a SCAN, for the country's).
        await self.console.bookings.fill_waitlists(
            session=session, office_codes=None if province_id is None else set(codes)
        )

    async def _replan_reopened(self, session: AsyncSession, codes: list[str], day: dt.date) -> None:
        """Write the reopened day again, now from the record: a clerk's replan that read the
        closure before the commit, and wrote after the replan above, closed the day again
        (it reads the calendar again once told). A failure here leaves the day as opened above."""
        try:
            await self.capacity.closures_changed()
            await self.capacity.replan(session=session, office_codes=codes, days=[day], apply=True)
        except (CapacityRebuilding, ClosuresChanging, RedisError, SQLAlchemyError, OSError):
            # The reopen is committed: no 5xx (its retry would be a 404). The plans' job
            # writes these offices from the record.
            await session.rollback()
            log.warning("the offices reopened on %s are written again by the minute's job", day, exc_info=True)
            with contextlib.suppress(RedisError):
                await self.capacity.apply_later(*codes, noted_in=keys.PLANS_TO_APPLY)


def _same_closure(day: dt.date, province_id: int | None, reason: str) -> tuple[ColumnElement[bool], ...]:
    """The closures of that day for the province (None: the whole country), for that reason."""
    province = Closure.province_id.is_(None) if province_id is None else Closure.province_id == province_id
    return (Closure.date == day, province, Closure.reason == reason)


def _waiting_on(day: dt.date, *statuses: BookingStatus) -> Select[Booking, str]:
    """The bookings of a day in these statuses (the places in line by default), each with its office's code."""
    return (
        select(Booking, Office.code)
        .join(Office, Office.id == Booking.office_id)
        .where(Booking.date == day, Booking.status.in_(statuses or (BookingStatus.WAITLISTED,)))
    )


def _not_opened(day: dt.date) -> ColumnElement[bool]:
    """The booking's office has no plan of its own that opens it on the day (a holiday)."""
    return ~opened_by_own_plan(Booking.office_id, literal(day))


async def _bookings_on(
    session: AsyncSession, day: dt.date, province_id: int | None, only: ColumnElement[bool], at_most: int
) -> int:
    """The bookings and places in line of a day at a closure's offices (``only`` those),
    counted up to ``at_most``."""
    found = _in_province(
        select(Booking.id)
        .join(Office, Office.id == Booking.office_id)
        .where(Booking.date == day, Booking.status.in_((BookingStatus.BOOKED, BookingStatus.WAITLISTED)), only),
        province_id,
    ).limit(at_most)
    return int(await session.scalar(select(func.count()).select_from(found.subquery())) or 0)


async def _offices_closed(session: AsyncSession, province_id: int | None) -> list[str]:
    """The codes of every office a closure of the province (None: the country) closes."""
    return list(await session.scalars(_in_province(select(Office.code), province_id)))


def _in_province(query: Select[*Columns], province_id: int | None) -> Select[*Columns]:
    """A query of offices (their codes, or rows joined to them) narrowed to a closure's
    province (None: the whole country)."""
    if province_id is None:
        return query
    return query.join(City, City.id == Office.city_id).where(City.province_id == province_id)
