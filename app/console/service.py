"""The office staff console: capacity plans, today's queue, walk-ins, the waiting count.

Every operation first checks that the staff member belongs to the office (regulators may
act on any office), and writes who did what, with before and after, to the audit log.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, NamedTuple, TypeVar

import msgspec
from redis.exceptions import RedisError
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from app.booking.models import SEAT_STATUSES, Booking, BookingStatus, Channel, Suspension
from app.booking.relocation import MOVE_LEAD, Relocator, overflow_bookings
from app.booking.schemas import BookingCreate, BookingOut
from app.booking.service import BookingService
from app.booking.tracking import normalize_tracking_code
from app.booking.writer import commit_unless_recounting, hold_off_recounts
from app.capacity import keys
from app.capacity.errors import AlreadyBookedThatDay, CapacityRebuilding, ClosuresChanging
from app.capacity.models import CapacityOverride, CapacityTemplate
from app.capacity.plan import (
    Calendar,
    DayRule,
    WeeklyTemplate,
    decode_rules,
    decode_template,
    encode_rules,
    encode_template,
    pool_for,
    slots_for,
    validate_rules,
)
from app.capacity.service import Capacity, Noted, Overflow, count_used, load_caps
from app.clock import Clock
from app.console.errors import (
    CapacityBelowBookings,
    CapacityBelowCheckedIn,
    NoMoreSeatsUnderCap,
    NoShowTooEarly,
    NotAtThisOffice,
    NotToday,
    TemplateChanged,
    WrongBookingState,
)
from app.console.schemas import CapacityChange, DayPlanOut, FarOverride, MovedBooking, QueueEntry
from app.db import RECORD_OR_REDIS_AWAY, Within, lock_row
from app.errors import InvalidInput
from app.identity import mask_national_id, normalize_mobile, normalize_national_id
from app.load.service import LoadService
from app.locale import check_text, jalali_date, to_persian_digits
from app.offices.errors import OfficeNotFound
from app.offices.models import City, Office, OfficeService, OfficeStatus, Service
from app.offices.service import normalize_code
from app.redis import renewed_lock
from app.settings import Settings
from app.staff.service import StaffPrincipal, audit, require_office

log = logging.getLogger(__name__)

_CANCEL_NOBODY = "cancel-nobody"
"""The tag (``Capacity.apply_later``) of a plan change whose clerk asked that nobody be moved,
so that whoever applies it (the request, or the minute's job after it) cancels nobody: a
booking that took a seat of a cut slot between the clerk's check and the new plan reaching
Redis had been cancelled. It stays, over the plan (the slot takes nobody new until it is back
under). Any other change (untagged) cancels whoever finds no seat left."""


Plan = TypeVar("Plan", CapacityTemplate, CapacityOverride)
MAX_REASON = 500  # the column's length
PLAN_LOCK = f"{keys.NAMESPACE}:plan-moves"
"""Per office: a clerk's change and the minute's job apply its plan one at a time (each would
take seats for the same citizens and cancel those the other's moves left no room for)."""
PLAN_LOCK_TRIES = 50
"""A change waits up to ten seconds (fifty tries) for its office's lock, then leaves its
moves to the job."""
PLAN_REQUEST_SECONDS = 60
"""A change noted this recently is its request's to apply: the job, reading the record before
the request's commit, would apply the old plan and forget the new one."""
QUEUE_HISTORY_DAYS = 366
"""How far back a clerk may look at a day's queue (the record keeps more)."""
SUSPENSION_CHUNK = 1000
"""National IDs a suspension query asks about at once (a bound on its parameters)."""
OFFICE_CHUNK = 1000
"""Offices a count of the record's seats asks about at once (a bound on its parameters: a
closure's moves cover a province)."""
SlotKey = tuple[str, dt.date, str, str]
"""An office-day's slot: office code, day, pool, time."""


class NoShowRules(msgspec.Struct, frozen=True):
    limit: int
    window_days: int
    suspension_days: int
    grace_minutes: int


class Moves(NamedTuple):
    """What a new plan's moves did (``Console.move_all``)."""

    moved: list[MovedBooking]
    left: list[Overflow]  # slots still over their seats after every try


class Console:
    def __init__(
        self,
        *,
        bookings: BookingService,
        relocator: Relocator,
        load: LoadService,
        clock: Clock,
        settings: Settings,
    ) -> None:
        self.bookings = bookings
        self.capacity: Capacity = bookings.capacity
        self.relocator = relocator
        self.load = load
        self.clock = clock
        self.no_shows = NoShowRules(
            limit=settings.no_show_limit,
            window_days=settings.no_show_window_days,
            suspension_days=settings.no_show_suspension_days,
            grace_minutes=settings.no_show_grace_minutes,
        )

    async def _office(self, session: AsyncSession, staff: StaffPrincipal, office_code: str) -> Office:
        office_code = normalize_code(office_code, "office_code")
        require_office(staff, office_code)
        office = await session.scalar(select(Office).where(Office.code == office_code))
        if office is None:
            raise OfficeNotFound()
        return office

    async def _plan_row(self, session: AsyncSession, office: Office, model: type[Plan], key: Any) -> Plan | None:
        """The office's plan row (its template, or a day's override) as the record has it,
        with the office locked until the change commits: two changes at once (a double click
        on a first save) had each found no row and both inserted one, the second failing with
        a 500. Taken after the new plan's dry run in Redis, so that no lock is held over its
        trips; what the change is weighed against in the record is read after it."""
        await lock_row(session, Office, office.id)
        return await session.get(model, key, populate_existing=True)

    # --- capacity ---

    async def template(self, *, session: AsyncSession, staff: StaffPrincipal, office_code: str) -> WeeklyTemplate:
        office = await self._office(session, staff, office_code)
        return await _template_of(session, office)

    async def set_template(
        self,
        *,
        session: AsyncSession,
        staff: StaffPrincipal,
        office_code: str,
        days: dict[int, list[DayRule]],
        move_overflow: bool,
        seen: WeeklyTemplate | None = None,
    ) -> CapacityChange:
        """Replace the office's weekly plan. ``seen``: the plan the new one was made from (a
        page's editor); another in the record once the office is locked, nothing is saved."""
        self.capacity.require_ready()
        office = await self._office(session, staff, office_code)
        for weekday, rules in days.items():
            if not 0 <= weekday <= 6:
                raise InvalidInput(
                    "days",
                    "Weekdays are 0 (Saturday) to 6 (Friday).",
                    detail_fa="روزهای هفته ۰ (شنبه) تا ۶ (جمعه) هستند.",
                )
            validate_rules(rules)
        await self._check_services(session, office, [rule for rules in days.values() for rule in rules])
        horizon = self.capacity.horizon(self.clock.today())
        new = encode_template(WeeklyTemplate(days=days))
        overflow = await self.capacity.replan(
            session=session,
            office_codes=[office.code],
            days=horizon,
            apply=False,
            template=new,
            begun_by=self.clock.now(),
        )
        row = await self._plan_row(session, office, CapacityTemplate, office.id)
        if seen is not None and (decode_template(row.template) if row else WeeklyTemplate(days={})) != seen:
            # Saved by someone else while this one was weighed: checked only before the lock
            # (by the page), the later of two saves at once had put back every day it showed.
            raise TemplateChanged()
        # Weighed with the office locked (a day's plan, a restriction, saved meanwhile is seen,
        # or waits), the plan's own faults first: a wrong plan is told so before any refusal
        # for its bookings.
        await self._check_days_counters(session, office, WeeklyTemplate(days=days), horizon[0])
        await self._refuse_overflow(session, office, overflow, move_overflow)
        await self._refuse_more_seats_under_a_cap(session, office, template=WeeklyTemplate(days=days))
        before = row.template if row else None
        if row is None:
            session.add(CapacityTemplate(office_id=office.id, template=new))
        else:
            row.template = new
        await self._audit(session, staff, office, "capacity.template.set", office.code, before, new)
        noted = await self._note_plan(office, move_overflow)
        await commit_unless_recounting(session, self.capacity.may_commit)
        # The template says which seat pool each service draws from.
        await self.bookings.offices.changed(office.code)
        return await self._apply_change(session, office, horizon, noted, move_overflow)

    async def set_override(
        self,
        *,
        session: AsyncSession,
        staff: StaffPrincipal,
        office_code: str,
        day: dt.date,
        rules: list[DayRule],
        reason: str,
        move_overflow: bool,
    ) -> CapacityChange:
        self.capacity.require_ready()
        check_text(reason, "reason", max_length=MAX_REASON, multiline=True, label_fa="دلیل")
        office = await self._office(session, staff, office_code)
        self.capacity.check_plannable(day, self.clock.today())
        validate_rules(rules)
        await self._check_services(session, office, rules)
        # A day beyond the horizon is in the record alone: nobody can have booked it, and the
        # night that brings it into the horizon counts it from the record.
        far = not self.capacity.in_horizon(day, self.clock.today())
        calendar = await self.capacity.calendar(session, first=day, last=day, office_ids=[office.id])
        calendar.overrides[(office.id, day)] = rules
        overflow = [] if far else await self._dry_run(session, office, day, calendar)
        row = await self._plan_row(session, office, CapacityOverride, (office.id, day))
        # Weighed with the office locked, as a template's is (``set_template``).
        await self._check_own_counters(session, office, rules)
        await self._refuse_overflow(session, office, overflow, move_overflow)
        await self._refuse_more_seats_under_a_cap(session, office, day=day, calendar=calendar)
        before = row.rules if row else None
        if row is None:
            session.add(CapacityOverride(office_id=office.id, date=day, rules=encode_rules(rules), reason=reason))
        else:
            row.rules, row.reason = encode_rules(rules), reason
        await self._audit(session, staff, office, "capacity.override.set", day.isoformat(), before, encode_rules(rules))
        return await self._commit_day_plan(session, office, day, move_overflow, far=far)

    async def clear_override(
        self, *, session: AsyncSession, staff: StaffPrincipal, office_code: str, day: dt.date, move_overflow: bool
    ) -> CapacityChange:
        self.capacity.require_ready()
        office = await self._office(session, staff, office_code)
        # A past day's counters linger until the day after it: replanned, its bookings would
        # be "moved" within a day that is over.
        self.capacity.check_plannable(day, self.clock.today())
        row = await session.get(CapacityOverride, (office.id, day))
        if row is None:
            return CapacityChange(office_code=office.code, days_changed=0, moved=[])
        far = not self.capacity.in_horizon(day, self.clock.today())
        calendar = await self.capacity.calendar(session, first=day, last=day, office_ids=[office.id])
        calendar.overrides.pop((office.id, day), None)
        overflow = [] if far else await self._dry_run(session, office, day, calendar)
        row = await self._plan_row(session, office, CapacityOverride, (office.id, day))
        if row is None:  # cleared meanwhile (a double click)
            await session.commit()
            return CapacityChange(office_code=office.code, days_changed=0, moved=[])
        # (No cap to weigh: the day goes back to its template, which a cap never refuses.)
        await self._refuse_overflow(session, office, overflow, move_overflow)
        await self._audit(session, staff, office, "capacity.override.clear", day.isoformat(), row.rules, None)
        await session.delete(row)
        return await self._commit_day_plan(session, office, day, move_overflow, far=far)

    async def _dry_run(self, session: AsyncSession, office: Office, day: dt.date, calendar: Calendar) -> list[Overflow]:
        """The day's new plan tried in Redis: the bookings it has no room for. Today's slots
        under way are kept as they are (``Capacity.replan``'s ``begun_by``)."""
        return await self.capacity.replan(
            session=session,
            office_codes=[office.code],
            days=[day],
            apply=False,
            calendar=calendar,
            begun_by=self.clock.now(),
        )

    async def _commit_day_plan(
        self, session: AsyncSession, office: Office, day: dt.date, move_overflow: bool, *, far: bool
    ) -> CapacityChange:
        """Commit a day's plan and apply it. A day beyond the horizon is noted for the minute's
        job only (saved as midnight brought the day into the horizon, the row could commit
        after the night had counted the day from the template), with no ask of its own: folded
        into a change noted before and not yet applied, it leaves that one's as it was."""
        noted = await self._note_plan(office, move_overflow or far)
        await commit_unless_recounting(session, self.capacity.may_commit)
        if far:
            return CapacityChange(office_code=office.code, days_changed=0, moved=[])
        return await self._apply_change(session, office, [day], noted, move_overflow)

    async def far_overrides(
        self, *, session: AsyncSession, staff: StaffPrincipal, office_code: str
    ) -> list[FarOverride]:
        """The days beyond the horizon the office has planned differently."""
        office = await self._office(session, staff, office_code)
        first = self.clock.today() + dt.timedelta(days=self.capacity.horizon_days)
        rows = await session.scalars(
            select(CapacityOverride)
            .where(CapacityOverride.office_id == office.id, CapacityOverride.date >= first)
            .order_by(CapacityOverride.date)
        )
        return [
            FarOverride(date=row.date.isoformat(), date_fa=jalali_date(row.date), closed=not decode_rules(row.rules),
                        reason=row.reason)
            for row in rows
        ]  # fmt: skip

    async def _refuse_more_seats_under_a_cap(
        self,
        session: AsyncSession,
        office: Office,
        *,
        template: WeeklyTemplate | None = None,
        day: dt.date | None = None,
        calendar: Calendar | None = None,
    ) -> None:
        """An office under a cap (its restriction, or a crowd cap over its province) may fill
        a share of its seats: more seats took back what the cap took (two seats a slot made
        four sold the same as before), which only its lift may. So on a capped day a ``day``'s
        new plan (``calendar``) may have no more seats than it has now or than the weekly
        template gives it (a cut undone); and a new weekly ``template`` may give no weekday
        more seats than the one in force if a capped day falls on it (weekday by weekday,
        whatever overrides or holidays hide: an override there, then cleared, had let a raise
        through; a restricted office's every day is capped). Cuts, and hours moved with no
        seat added, stay the clerk's. Read with the office locked (``_plan_row``): a
        restriction that came first is seen."""
        today = self.clock.today()
        province_id = await _province_of(session, office)
        restricted = office.status == OfficeStatus.RESTRICTED
        caps = [
            (rule.starts_on, rule.ends_on)
            for rule in await load_caps(session, first=today, last=dt.date.max)
            if rule.percent < 100 and rule.province_id in (None, province_id)
        ]
        if not restricted and not caps:
            return
        current = await _template_of(session, office)

        def weekly(plan: WeeklyTemplate, date: dt.date) -> int:
            return sum(slot.seats for slot in slots_for(plan, date))

        def first_capped(date: dt.date) -> dt.date | None:
            """The first capped day, from today on, on ``date``'s weekday."""
            if restricted:
                return date
            found = []
            for starts_on, ends_on in caps:
                start = max(starts_on, today)
                candidate = start + dt.timedelta(days=(date.weekday() - start.weekday()) % 7)
                if candidate <= ends_on:
                    found.append(candidate)
            return min(found, default=None)

        if template is not None:
            week = [today + dt.timedelta(days=i) for i in range(7)]  # each weekday once
            raised = [
                capped
                for date in week
                if weekly(template, date) > weekly(current, date) and (capped := first_capped(date)) is not None
            ]
        else:
            assert day is not None and calendar is not None, "a day's new plan"
            if not restricted and not any(starts_on <= day <= ends_on for starts_on, ends_on in caps):
                return
            now = await self.capacity.calendar(session, first=day, last=day, office_ids=[office.id])

            def seats(plan: Calendar) -> int:
                slots = plan.slots(office_id=office.id, province_id=province_id, template=current, day=day)
                return sum(slot.seats for slot in slots)

            raised = [day] if seats(calendar) > max(seats(now), weekly(current, day)) else []
        if raised:
            raise NoMoreSeatsUnderCap(sorted(date.isoformat() for date in raised))

    async def _check_services(self, session: AsyncSession, office: Office, rules: list[DayRule]) -> None:
        """A rule's own counter must be for a service the office offers: a typo ("1O4") made a
        pool nobody could book from."""
        named = {rule.service for rule in rules if rule.service is not None}
        if not named:
            return
        offered = set(
            await session.scalars(select(OfficeService.service_code).where(OfficeService.office_id == office.id))
        )
        if named - offered:
            raise InvalidInput(
                "service",
                f"The office does not offer service {sorted(named - offered)[0]}.",
                detail_fa="این دفتر چنین خدمتی ارائه نمی‌دهد.",
            )

    async def _check_own_counters(self, session: AsyncSession, office: Office, rules: list[DayRule]) -> None:
        """A day's counter of a service's own must be one the weekly template gives it: the
        template alone says which pool a service books from (``pool_for``), so a desk opened
        for one day for a service that books from the shared seats was counted in the day's
        seats while nobody could book it, and its service found no seats that day."""
        named = {rule.service for rule in rules if rule.service is not None}
        if not named:
            return
        template = await _template_of(session, office)
        if service := _without_own_pool(template, rules):
            raise InvalidInput(
                "service",
                f"The weekly template gives service {service} no counter of its own: it books from the "
                "shared seats, and nobody could book this counter. Plan its seats in the shared rules, "
                "or give it a counter in the weekly template first.",
                detail_fa=f"خدمت {to_persian_digits(service)} در برنامهٔ هفتگی باجهٔ جداگانه ندارد و از "
                "ظرفیت مشترک نوبت می‌گیرد؛ کسی نمی‌تواند از این باجه نوبت بگیرد. ظرفیت آن را در بازه‌های "
                "مشترک بگذارید، یا نخست در برنامهٔ هفتگی برایش باجه تعریف کنید.",
            )

    async def _check_days_counters(
        self, session: AsyncSession, office: Office, template: WeeklyTemplate, first: dt.date
    ) -> None:
        """``_check_own_counters`` for the days planned apart from ``first`` on, under a new
        template: one that takes a service's counter away had left those days' counters for it
        counted in their seats while nobody could book them."""
        planned = await session.execute(
            select(CapacityOverride.date, CapacityOverride.rules)
            .where(CapacityOverride.office_id == office.id, CapacityOverride.date >= first)
            .order_by(CapacityOverride.date)
        )
        stranded = [
            (day, service) for day, raw in planned if (service := _without_own_pool(template, decode_rules(raw)))
        ]
        if stranded:
            dates = ", ".join(day.isoformat() for day, _ in stranded)
            service = stranded[0][1]
            # The clerk's own calendar and the service's name: «۲۰۲۶-۰۵-۰۳» and «۱۰۴» meant little.
            dates_fa = "، ".join(jalali_date(day) for day, _ in stranded)
            name = await session.scalar(select(Service.name_fa).where(Service.code == service))
            raise InvalidInput(
                "days",
                f"The plans of {dates} give service {service} a counter of its own, which this template "
                "does not: nobody could book it on those days. Change those days' plans first.",
                detail_fa=f"برنامهٔ روزهای {dates_fa} برای «{name or to_persian_digits(service)}» "
                "باجهٔ جداگانه دارد و این برنامهٔ هفتگی ندارد؛ کسی نمی‌تواند آن روزها از آن باجه نوبت بگیرد. "
                "نخست برنامهٔ آن روزها را تغییر دهید.",
            )

    async def day_plans(self, *, session: AsyncSession, staff: StaffPrincipal, office_code: str) -> list[DayPlanOut]:
        office = await self._office(session, staff, office_code)
        days = self.capacity.horizon(self.clock.today())
        calendar = await self.capacity.calendar(session, first=days[0], last=days[-1], office_ids=[office.id])
        # Read off the office's city, not its plan: an office with no template yet (the page
        # that makes one lists these days) has no plan to read it from.
        province_id = await _province_of(session, office)
        # Asked for together, the fourteen days share a trip to Redis (app.redis.AutoPipeline), not take turns.
        views = await asyncio.gather(*(self.capacity.day_view(office_code=office.code, day=day) for day in days))
        result = []
        for day, view in zip(days, views, strict=True):
            slots = view.slots if view else []
            result.append(
                DayPlanOut(
                    date=day.isoformat(),
                    date_fa=jalali_date(day),
                    source=calendar.source(office_id=office.id, province_id=province_id, day=day),
                    slots=sum(1 for s in slots if s.seats > 0),
                    seats=sum(s.seats for s in slots),
                    booked=sum(s.used for s in slots),
                )
            )
        return result

    async def _refuse_overflow(
        self, session: AsyncSession, office: Office, overflow: list[Overflow], move_overflow: bool
    ) -> None:
        overflow = await self._held_over(session, overflow)
        if overflow and not move_overflow:
            raise CapacityBelowBookings(
                [
                    {"date": o.day.isoformat(), "slot": o.time, "pool": o.pool, "seats": o.seats, "booked": o.booked}
                    for o in overflow
                ]
            )
        # Citizens already checked in are in the room: they cannot be moved, so no plan may
        # leave a slot fewer seats than they hold (the load test found a cut that did).
        # One query: only today's bookings can be checked in.
        today = [o for o in overflow if o.day == self.clock.today()]
        if not today:
            return
        rows = await session.execute(
            select(Booking.pool, Booking.slot_time, func.count())
            .where(
                Booking.office_id == office.id,
                Booking.date == today[0].day,
                Booking.status == BookingStatus.CHECKED_IN,
            )
            .group_by(Booking.pool, Booking.slot_time)
        )
        checked_in = {(pool, time): count for pool, time, count in rows}
        present = [
            {"date": o.day.isoformat(), "slot": o.time, "pool": o.pool, "seats": o.seats, "checked_in": n}
            for o in today
            if (n := checked_in.get((o.pool, o.time), 0)) > o.seats
        ]
        if present:
            raise CapacityBelowCheckedIn(present)

    async def _held_over(self, session: AsyncSession, overflow: list[Overflow]) -> list[Overflow]:
        """The slots of ``overflow`` over by the citizens who hold their seats, each counted
        as ``overflow_bookings`` counts it: by Redis, but never by more than the record holds.
        Redis keeps counting a seat whose citizen was served or marked absent (it was used,
        and a slot begun sells no more): counted by Redis alone, a morning slot whose citizens
        were all served had a same-day cut refused for nobody."""
        if not overflow:
            return []
        holding = await self._holders(session, overflow)
        counted = [msgspec.structs.replace(o, booked=min(o.booked, holding[_slot(o)])) for o in overflow]
        return [o for o in counted if o.booked > o.seats]

    async def _still_over(self, session: AsyncSession, overflow: list[Overflow]) -> list[Overflow]:
        """The slots of ``overflow`` a cut's moves must still empty. A slot begun takes no
        booking more: it is over by the record's holders (see ``_held_over``; its used-up seats
        have nobody to move). A later one is over by what Redis counts: a booking that took
        its seat just before the cut may reach the record only after this look, and is looked
        for again (``move_all``)."""
        now = self.clock.now()
        begun = [o for o in overflow if (o.day, o.time) <= (now.date(), now.strftime("%H:%M"))]
        if not begun:
            return [o for o in overflow if o.booked > o.seats]
        holding = await self._holders(session, begun)
        started = {_slot(o) for o in begun}
        return [
            o for o in overflow if (min(o.booked, holding[_slot(o)]) if _slot(o) in started else o.booked) > o.seats
        ]

    async def _holders(self, session: AsyncSession, overflow: list[Overflow]) -> Counter[SlotKey]:
        """For each slot of ``overflow``, the record's bookings that hold one of its seats."""
        holding: Counter[SlotKey] = Counter()
        codes = sorted({o.office_code for o in overflow})
        for start in range(0, len(codes), OFFICE_CHUNK):
            rows = await session.execute(
                select(Office.code, Booking.date, Booking.pool, Booking.slot_time, func.count())
                .join(Office, Office.id == Booking.office_id)
                .where(
                    Office.code.in_(codes[start : start + OFFICE_CHUNK]),
                    Booking.date.in_({o.day for o in overflow}),
                    Booking.slot_time.in_({o.time for o in overflow}),
                    Booking.status.in_(SEAT_STATUSES),
                )
                .group_by(Office.code, Booking.date, Booking.pool, Booking.slot_time)
            )
            for code, day, pool, time, count in rows:
                holding[(code, day, pool, time)] += count
        return holding

    async def _note_plan(self, office: Office, move_overflow: bool) -> Noted:
        """Note the office's plan change for the minute's job, before its commit."""
        return await self.capacity.apply_later(
            office.code, noted_in=keys.PLANS_TO_APPLY, tag="" if move_overflow else _CANCEL_NOBODY
        )

    async def _apply_change(
        self, session: AsyncSession, office: Office, days: list[dt.date], noted: Noted, move_overflow: bool
    ) -> CapacityChange:
        """Apply a plan just committed, noted by ``Capacity.apply_later`` before its commit:
        if this fails half-way (Redis, the record, a recount), or the minute's job holds the
        office past ``PLAN_LOCK_TRIES``, the job applies it again (``finish_plans``). (Before, a
        clerk who did not retry left citizens booked in hours the office no longer kept.)
        Its own days, as its clerk asked (``move_overflow``); a change noted before it and not
        yet applied (its request failed, or is under way), folded into its note, is left to
        the job with the note, which applies the whole horizon: forgotten here, its days had
        reached Redis only with the night's recount."""
        code = office.code  # read now: ``_apply`` may leave ``office`` expired
        try:
            applied = await self._apply_noted(
                session,
                office,
                days,
                noted.change,
                cancel_unplaced=move_overflow,
                keep_note=noted.earlier,
                tries=PLAN_LOCK_TRIES,
            )
        except ClosuresChanging:  # nothing is down: the job writes it once the closures settle
            await session.rollback()
            applied = None
        if applied is None:  # the job's now
            return CapacityChange(office_code=code, days_changed=len(days), moved=[])
        return applied

    async def _apply_noted(
        self,
        session: AsyncSession,
        office: Office,
        days: list[dt.date],
        change: str,
        *,
        cancel_unplaced: bool,
        keep_note: bool = False,
        tries: int,
    ) -> CapacityChange | None:
        """``_apply`` under the office's plan lock, waiting up to ``tries`` x 0.2 s for it (a
        clerk's other change, or the job, holds it), then forget the noted ``change`` (unless
        ``keep_note``, or a later change was noted since). None when the lock stayed held."""
        code = office.code
        lock = f"{PLAN_LOCK}:{code}"
        async with renewed_lock(self.capacity.redis, lock, uuid.uuid4().hex, seconds=30, tries=tries) as held:
            if not held:
                return None
            applied, finished = await self._apply(session, office, days, change, cancel_unplaced=cancel_unplaced)
            if finished and not keep_note:  # else the job's, to apply (again)
                await self.capacity.applied(code, change, noted_in=keys.PLANS_TO_APPLY)
            return applied

    async def finish_plans(self, *, session: AsyncSession) -> int:
        """The minute's job: apply the plans committed whose request did not see them through.
        The offices done."""
        if not await self.capacity.is_built():
            return 0  # paused for a recount: the next run
        done = 0
        for code, change in (
            await self.capacity.to_apply(older_than=PLAN_REQUEST_SECONDS, noted_in=keys.PLANS_TO_APPLY)
        ).items():
            office = await session.scalar(select(Office).where(Office.code == code))
            if office is None:
                await self.capacity.applied(code, change, noted_in=keys.PLANS_TO_APPLY)
                continue
            try:
                horizon = self.capacity.horizon(self.clock.today())
                cancel_unplaced = not change.endswith(_CANCEL_NOBODY)
                applied = await self._apply_noted(
                    session, office, horizon, change, cancel_unplaced=cancel_unplaced, tries=1
                )
                if applied is not None:
                    done += 1
            except Exception:  # one office's failure must not keep the others waiting
                await session.rollback()
                log.exception("the plan of office %s waits for the next run", code)
        return done

    async def _apply(
        self, session: AsyncSession, office: Office, days: list[dt.date], change: str, *, cancel_unplaced: bool
    ) -> tuple[CapacityChange, bool]:
        """Write the record's plan into Redis, move whoever no longer fits (and cancel, if
        ``cancel_unplaced``, whoever finds no seat left), hand any new seats to the waitlists,
        and end the lines left with none. Also whether it all was done."""
        # Read now: a promotion the fill must undo rolls back, expiring ``office``.
        code, office_id = office.code, office.id
        # A slot under way keeps its seats and its citizens (``Capacity.replan``).
        begun_by = self.clock.now()
        overflow = await self.capacity.replan(
            session=session, office_codes=[code], days=days, apply=True, begun_by=begun_by
        )
        # Redis holds the new plan now, so a slot that was not over cannot become over: only
        # a cut that found some over has anyone to move (and looks again after).
        why = f"به دلیل تغییر ظرفیت {office.name_fa}،"
        moved, left = await self.move_all(
            session,
            [code],
            days,
            overflow,
            {code: office},
            why_fa=why,
            cancel_unplaced=cancel_unplaced,
            begun_by=begun_by,
        )
        # A slot left over by a seat the record has no holder for: a booking on its way to the
        # record (moved here by another office's cut or a closure, a slow commit) may land in
        # it after the tries. Not finished: the minute's job applies the plan again, and moves
        # it then. (Left over by citizens who checked in, it is finished: nobody can move.)
        unheld = await self._counted_for_nobody(session, left)
        await self.bookings.fill_waitlists(session=session, office_codes={code})
        ended = await self._end_shut_lines(session, code, office_id, change, why)
        return CapacityChange(office_code=code, days_changed=len(days), moved=moved), ended and not unheld

    async def _counted_for_nobody(self, session: AsyncSession, overflow: list[Overflow]) -> bool:
        """Whether a slot of ``overflow`` counts in Redis more seats than the record has taken,
        counted as a recount counts them (``count_used``): the served and absent keep theirs,
        a citizen served early on a capped day too. Counting only those standing, a capped
        day's citizen served early kept a cut "not finished" until the slot passed, the plan
        applied again every minute."""
        if not overflow:
            return False
        offices = select(Office.code, Office.id).where(Office.code.in_({o.office_code for o in overflow}))
        ids: dict[str, int] = {code: office_id for code, office_id in await session.execute(offices)}
        days = sorted({o.day for o in overflow})
        used = await count_used(session, office_ids=list(ids.values()), days=days, now=self.clock.now())
        for office_day in sorted({(o.office_code, o.day) for o in overflow}):
            capped = await self.capacity.capped(*office_day)
            taken = used.on(ids[office_day[0]], office_day[1], capped=capped)
            if any(taken.get((o.pool, o.time), 0) < o.booked for o in overflow if (o.office_code, o.day) == office_day):
                return True
        return False

    async def _end_shut_lines(self, session: AsyncSession, code: str, office_id: int, change: str, why: str) -> bool:
        """A cut of a capped day (a restriction, a crowd cap) to a share that rounds to no seat:
        its line can never move, and is ended with each citizen told (``end_shut_lines``).
        Read with the office locked, as a restriction does: a lift that came first keeps the
        line, one that comes waits. Left to a later change of the plan, noted already (a raise
        saved meanwhile, not yet in Redis: its own application decides). False when it failed:
        the change is committed and answered (its moves were told), and the minute's job
        applies it again (``finish_plans``)."""
        waiting = (
            select(Booking.id)
            .join(Office, Office.id == Booking.office_id)
            .where(Office.code == code, Booking.status == BookingStatus.WAITLISTED, Booking.date >= self.clock.today())
        )
        try:
            if await session.scalar(waiting.limit(1)) is None:  # no line: no lock taken
                await session.commit()  # the read's transaction ended (the job goes on to the next office)
                return True
            await lock_row(session, Office, office_id)
            if await self.capacity.noted(code, noted_in=keys.PLANS_TO_APPLY) not in (change, None):
                await session.rollback()
                return True
            await self.bookings.end_shut_lines(session=session, office_codes={code}, why_fa=why)
            return True
        except (CapacityRebuilding, RedisError, SQLAlchemyError, OSError):
            await session.rollback()
            log.warning("the lines office %s's plan shut are ended by the minute's job", code, exc_info=True)
            return False

    async def move_all(
        self,
        session: AsyncSession,
        office_codes: list[str],
        days: list[dt.date],
        overflow: list[Overflow],
        offices: dict[str, Office],
        *,
        why_fa: str,
        cancel_unplaced: bool = True,
        begun_by: dt.datetime | None = None,
    ) -> Moves:
        """Move the bookings a new plan (already applied) has no room for, until none is left;
        one with no seat left is cancelled, unless not ``cancel_unplaced``. ``begun_by``: as
        the plan was applied (``Capacity.replan``)."""

        async def still_over() -> list[Overflow]:
            found = await self.capacity.replan(
                session=session, office_codes=office_codes, days=days, apply=False, begun_by=begun_by
            )
            return await self._still_over(session, found)

        # A slot over only by seats used up (a morning's served citizens) has nobody to move:
        # taken for over-full, it was looked at again for a second and then kept at its count.
        overflow = await self._still_over(session, overflow)
        if not overflow:
            return Moves([], [])
        moved = await self.move_overflow(session, overflow, offices, why_fa=why_fa, cancel_unplaced=cancel_unplaced)
        # A booking that took its seat just before the cut may commit just after our look at
        # the record: look again (Redis says whether a slot is still over) until none is.
        for _ in range(5):
            overflow = await still_over()
            if not overflow:
                return Moves(moved, [])
            await asyncio.sleep(0.2)
            moved += await self.move_overflow(
                session, overflow, offices, why_fa=why_fa, cancel_unplaced=cancel_unplaced
            )
        # Still over after every try: whoever holds those seats could not be moved (they
        # checked in a moment after the refusal check), or has not reached the record yet
        # (``_apply`` leaves that to the minute's job). They keep their seats, and the slot
        # its plan's: it takes nobody new until it is back under the plan (every script counts
        # a slot holding more than its seats as full). Raised to its holders' count, it had
        # sold again each seat a holder gave back, over the plan for good.
        overflow = await still_over()
        if overflow:
            log.warning("capacity cut left %d slot(s) over their seats, held by who could not move", len(overflow))
        return Moves(moved, overflow)

    async def move_overflow(
        self,
        session: AsyncSession,
        overflow: list[Overflow],
        offices: dict[str, Office],
        *,
        why_fa: str,
        cancel_unplaced: bool,
    ) -> list[MovedBooking]:
        """Move the bookings a new plan has no room for: each office's in one batch."""
        by_office: dict[str, list[Overflow]] = defaultdict(list)
        for slot in overflow:
            by_office[slot.office_code].append(slot)
        moved: list[MovedBooking] = []
        for office_code, slots in by_office.items():
            office = offices.get(office_code) or await session.scalar(select(Office).where(Office.code == office_code))
            assert office is not None
            bookings = await overflow_bookings(session, office_id=office.id, overflow=slots)
            results = await self.relocator.relocate(
                session=session,
                bookings=bookings,
                from_office=office,
                same_office=True,
                why_fa=why_fa,
                cancel_unplaced=cancel_unplaced,
            )
            moved += [
                MovedBooking(tracking_code=r.tracking_code, moved=r.moved, office_code=r.office_code, slot=r.time)
                for r in results
            ]
        return moved

    # --- today's queue ---

    async def queue(
        self, *, session: AsyncSession, staff: StaffPrincipal, office_code: str, day: dt.date | None
    ) -> list[QueueEntry]:
        office = await self._office(session, staff, office_code)
        today = self.clock.today()
        day = day or today
        first, last = today - dt.timedelta(days=QUEUE_HISTORY_DAYS), self.capacity.horizon(today)[-1]
        if not first <= day <= last:  # 9999-12-31 had no Jalali date for the page to show: a 500
            raise InvalidInput(
                "date",
                f"A day's queue can be seen from {first.isoformat()} to {last.isoformat()}.",
                detail_fa=f"صف روزهای {jalali_date(first)} تا {jalali_date(last)} را می‌توان دید.",
            )
        rows = await session.execute(
            select(Booking, Service.name_fa)
            .join(Service, Service.code == Booking.service_code)
            .where(
                Booking.office_id == office.id,
                Booking.date == day,
                Booking.status != BookingStatus.WAITLISTED,
                # Nor places in line that ended (left, ended, expired): they never held a seat,
                # and with no time they had headed the day's queue.
                Booking.slot_time != "",
            )
            .order_by(Booking.slot_time, Booking.created_at)
        )
        return [_entry(booking, service_name) for booking, service_name in rows]

    async def _queued(
        self, session: AsyncSession, staff: StaffPrincipal, office_code: str, tracking_code: str
    ) -> tuple[Office, Booking, str]:
        office = await self._office(session, staff, office_code)
        code = normalize_tracking_code(tracking_code)
        row = (
            await session.execute(
                select(Booking, Service.name_fa)
                .join(Service, Service.code == Booking.service_code)
                .where(Booking.tracking_code == code)
                .with_for_update(of=Booking)
            )
        ).first()
        if row is None or row[0].office_id != office.id:
            raise NotAtThisOffice()
        if row[0].date != self.clock.today():
            raise NotToday()
        return office, row[0], row[1]

    async def _transition(
        self,
        session: AsyncSession,
        staff: StaffPrincipal,
        office_code: str,
        tracking_code: str,
        allowed: tuple[BookingStatus, ...],
        to: BookingStatus,
        before_commit: Callable[[Office, Booking, BookingStatus], Awaitable[None]] | None = None,
    ) -> tuple[Office, Booking, QueueEntry, BookingStatus]:
        """The booking moved from one of ``allowed`` to ``to``; with the status it had.
        ``before_commit``: run with the change made and the status it had, just before it
        commits (not when the booking was ``to`` already)."""
        office, booking, service_name = await self._queued(session, staff, office_code, tracking_code)
        if booking.status is to:
            # The same action again (a double click, F5 on the page, a second clerk): done
            # already, and said so, not refused as a wrong state. (What follows an action,
            # giving back the citizen's hold, weighing a no-show, is the same done twice.)
            await session.commit()  # the row's lock goes
            return office, booking, _entry(booking, service_name), to
        if booking.status not in allowed:
            raise WrongBookingState(booking_status=booking.status.value)
        if to == BookingStatus.NO_SHOW:
            self._refuse_early_no_show(booking)
        before = booking.status
        # Compare-and-set on the booking as the clerk saw it: a cancellation or a move that
        # landed since the read must win (SQLite has no row locks). A check-in must neither
        # overwrite the one nor mark a booking that now lives at another office or slot. The
        # status read exactly, not any allowed: a check-in that read "booked" and landed on a
        # second clerk's "absent" had taken back the mark without forgiving it (the hold it
        # let go of, the suspension it brought).
        try:
            changed = await session.execute(
                update(Booking)
                .where(
                    Booking.id == booking.id,
                    Booking.status == before,
                    Booking.office_id == booking.office_id,
                    Booking.slot_time == booking.slot_time,
                    Booking.pool == booking.pool,
                )
                .values(status=to)
                .execution_options(synchronize_session=False)
            )
        except IntegrityError:
            # A no-show checked in after all, whose citizen has booked the service that day
            # again since (a walk-in, a later slot): one active booking a service a day.
            await session.rollback()
            raise AlreadyBookedThatDay() from None
        if changed.rowcount != 1:  # type: ignore[attr-defined]
            await session.rollback()
            raise WrongBookingState(booking_status="changed")
        booking.status = to
        await self._audit(session, staff, office, f"booking.{to.value}", booking.tracking_code, before.value, to.value)
        if before_commit is not None:
            await before_commit(office, booking, before)
        await session.commit()
        return office, booking, _entry(booking, service_name), before

    async def check_in(
        self, *, session: AsyncSession, staff: StaffPrincipal, office_code: str, tracking_code: str
    ) -> QueueEntry:
        """Also a no-show marked today, taken back: the citizen came late after all, or the
        clerk tapped the wrong row. Left, the mark could not be undone, and counted towards a
        week's suspension for a citizen standing at the counter."""
        _, booking, entry, before = await self._transition(
            session,
            staff,
            office_code,
            tracking_code,
            (BookingStatus.BOOKED, BookingStatus.NO_SHOW),
            BookingStatus.CHECKED_IN,
        )
        if before is BookingStatus.NO_SHOW:
            await self._forgive_no_show(session, booking)
        return entry

    async def _forgive_no_show(self, session: AsyncSession, booking: Booking) -> None:
        """A no-show taken back: the booking counts against the citizen's limits again (the
        mark had let go of its hold), and a suspension made since it could be marked goes,
        unless the no-shows left still call for one (made again as ``no_show`` makes them)."""
        national_id, code, day, service_code = (
            booking.national_id,
            booking.tracking_code,
            booking.date,
            booking.service_code,
        )
        today = self.clock.today()
        # The earliest this mark could have been made: a suspension made before it (the
        # night's close, for yesterday's no-shows) is not this mark's to take back.
        marked_from = self._absent_from(day, booking.slot_time)
        try:
            await self.capacity.hold_again(
                national_id=national_id, tracking_code=code, day=day, service_code=service_code
            )
            made = await session.scalars(select(Suspension).where(Suspension.national_id == national_id))
            today_s = [s for s in made if self.clock.aware(s.created_at) >= marked_from]
            if not today_s:
                return
            for suspension in today_s:
                await session.delete(suspension)
            await session.flush()
            await self.suspend_for_no_shows(session=session, national_ids=[national_id], today=today)
            until = await session.scalar(
                select(func.max(Suspension.until)).where(
                    Suspension.national_id == national_id, Suspension.until > today
                )
            )
            await session.commit()
            if until is None:
                await self.capacity.lift_suspension(national_id=national_id)
            else:
                await self.capacity.suspend(national_id=national_id, until=until, today=today)
        except RECORD_OR_REDIS_AWAY:
            # The check-in is committed: the clerk is not told of a failure they cannot mend.
            await session.rollback()
            log.exception("a no-show taken back: its hold or suspension left as they were")

    async def serve(
        self, *, session: AsyncSession, staff: StaffPrincipal, office_code: str, tracking_code: str
    ) -> QueueEntry:
        """Served before the booking's slot began, a citizen known to be in the room (checked
        in, or a walk-in: given 15:00, served at 10:10), its seat goes back on sale and to the
        line, as a cancel's does: it had stayed counted, sold to nobody, until the slot passed.
        Not a booking served straight from "booked": a tap on the wrong row cannot be taken
        back, and the seat, sold again, would be its holder's at 15:00 too."""
        early: list[str] = []  # the count the seat is in, read under the recount barrier

        async def read_count(office: Office, booking: Booking, before: BookingStatus) -> None:
            now = self.clock.now()
            if (booking.date, booking.slot_time) <= (now.date(), now.strftime("%H:%M")) or not self.capacity.ready:
                return
            if before is not BookingStatus.CHECKED_IN and booking.channel is not Channel.WALK_IN:
                return
            await hold_off_recounts(session)
            # A recount begun meanwhile, or Redis not answering: served all the same, the
            # seat left counted (the safe side; the next recount frees it), the clerk not refused.
            try:
                # Nor on a capped day (a restriction, a crowd cap): a cancel's seat given back is
                # one person fewer, a served one's would be one more than the cap lets in.
                if await self.capacity.capped(office.code, booking.date):
                    return
                if await self.capacity.may_commit():
                    office_day = (office.code, booking.date)
                    early.append((await self.capacity.counts([office_day]))[office_day])
            except RedisError:
                log.warning("a booking served before its slot keeps its seat counted: Redis did not answer")

        office, booking, entry, _ = await self._transition(
            session,
            staff,
            office_code,
            tracking_code,
            (BookingStatus.BOOKED, BookingStatus.CHECKED_IN),
            BookingStatus.SERVED,
            before_commit=read_count,
        )
        # Served: no longer an active booking, so it stops counting against the citizen's limits.
        await self.bookings.unhold(booking)
        if early:
            try:
                await self.bookings.free_seat(
                    session=session,
                    office_code=office.code,
                    day=booking.date,
                    pool=booking.pool,
                    time=booking.slot_time,
                    counted_in=early[0],
                )
            except RECORD_OR_REDIS_AWAY:
                await session.rollback()
                log.exception("a booking served before its slot: its seat left counted until the night's recount")
        return entry

    async def no_show(
        self, *, session: AsyncSession, staff: StaffPrincipal, office_code: str, tracking_code: str
    ) -> QueueEntry:
        _, booking, entry, _ = await self._transition(
            session, staff, office_code, tracking_code, (BookingStatus.BOOKED,), BookingStatus.NO_SHOW
        )
        # The mark is committed: a failure after it answered the clerk with an error, their
        # retry was refused "wrong state", and the suspension it was due was never made. A
        # suspension not made here is made by the night's close (app.booking.tasks), a hold
        # not let go of by the night's recount.
        booking_id, national_id = booking.id, booking.national_id
        told = False
        try:
            # Under the row's lock, and only while it is still absent: a second clerk's
            # "arrived", landed since the mark, took it back and forgave what it found; the
            # hold let go of after it had left a citizen in the room unable to book again.
            marked = await lock_row(session, Booking, booking_id)
            if marked is not None and marked.status is BookingStatus.NO_SHOW:
                await self.bookings.unhold(marked)
                today = self.clock.today()
                if await self.suspend_for_no_shows(session=session, national_ids=[national_id], today=today):
                    await session.flush()
                    # Told before the commit lets the lock go: told after, an "arrived" in
                    # between lifted it first, and this put it back on a citizen in the room.
                    told = True
                    await self.capacity.suspend(
                        national_id=national_id, until=self._suspension_ends(today), today=today
                    )
            await session.commit()
        except RECORD_OR_REDIS_AWAY:
            await session.rollback()
            log.exception("a no-show's hold and suspension are left to the night")
            if told:  # made in no record: none stood before it (suspend_for_no_shows makes none then)
                with contextlib.suppress(RedisError):
                    await self.capacity.lift_suspension(national_id=national_id)
        return entry

    def _refuse_early_no_show(self, booking: Booking) -> None:
        """A citizen is absent only once their slot has started and the grace has passed:
        marked earlier, they would lose the seat and count towards a suspension while
        still on their way."""
        after = self._absent_from(booking.date, booking.slot_time)
        if self.clock.now() < after:
            raise NoShowTooEarly(after=after.strftime("%H:%M"))

    async def suspend_for_no_shows(
        self, *, session: AsyncSession, national_ids: Iterable[str], today: dt.date, last_day: dt.date | None = None
    ) -> int:
        """Suspend, in the session (the caller commits, then tells Redis), each of these
        national IDs whose no-shows in the window reach the limit and that is not suspended
        already, until ``_suspension_ends(today)``; how many. A query per ``SUSPENSION_CHUNK``
        IDs, not per ID: the nightly close brings a whole country's no-shows at once.
        ``last_day``: the window's last day (the night's close: the day it closed; it had
        counted from after midnight, 29 days where a clerk's mark counts 30)."""
        since = (last_day or today) - dt.timedelta(days=self.no_shows.window_days)
        now = self.clock.now()
        wanted = sorted(set(national_ids))
        made = 0
        for start in range(0, len(wanted), SUSPENSION_CHUNK):
            chunk = wanted[start : start + SUSPENSION_CHUNK]
            # The no-shows an earlier suspension was made for do not count again: counted, one
            # more no-show after it ended (three in 30 days still) suspended the citizen again.
            # Only those after the last day the last one counted count (``counted_to``; one made
            # before it was kept: the day it was made): not by its end less today's setting,
            # which a change of the setting would move. The night's counts up to yesterday,
            # and a no-show marked the day it was made counted later, as it had not.
            last = {
                national_id: (until, counted_to or self.clock.aware(made).astimezone(self.clock.tz).date())
                for national_id, until, made, counted_to in await session.execute(
                    select(
                        Suspension.national_id,
                        func.max(Suspension.until),
                        func.max(Suspension.created_at),
                        func.max(Suspension.counted_to),
                    )
                    .where(Suspension.national_id.in_(chunk))
                    .group_by(Suspension.national_id)
                )
            }
            # A walk-in's no-show does not count: anyone at the counter can be given any
            # national ID, so a clerk could otherwise bar a stranger from booking for a week.
            # Nor one of a booking moved to another office (a block, a closure, a clerk's cut):
            # the citizen did not choose it, and may have had only the morning's SMS to learn of it.
            # Nor one given from the line too near its slot to come (a seat freed a minute before).
            missed = await session.execute(
                select(Booking.national_id, Booking.date, Booking.slot_time, Booking.promoted_at).where(
                    Booking.national_id.in_(chunk),
                    Booking.status == BookingStatus.NO_SHOW,
                    Booking.channel != Channel.WALK_IN,
                    Booking.moved_from_office_id.is_(None) | (Booking.moved_from_office_id == Booking.office_id),
                    Booking.date > since,
                )
            )
            counted: dict[str, list[dt.date]] = defaultdict(list)  # each ID's no-shows that count
            for national_id, day, slot_time, promoted_at in missed:
                if (national_id not in last or day > last[national_id][1]) and not self._promoted_too_late(
                    day, slot_time, promoted_at
                ):
                    counted[national_id].append(day)
            suspensions = [
                Suspension(
                    national_id=national_id,
                    until=self._suspension_ends(today),
                    reason=f"{len(days)} no-shows in {self.no_shows.window_days} days",
                    created_at=now,  # by the service's clock, as read above (SQLite's own is UTC)
                    # The last day it counted: the night's counts up to yesterday (a no-show
                    # marked today counts towards the next), a run by day today's too (counted
                    # once, not again in the next).
                    counted_to=max(days),
                )
                for national_id, days in sorted(counted.items())
                if len(days) >= self.no_shows.limit and (national_id not in last or last[national_id][0] <= today)
            ]
            session.add_all(suspensions)
            made += len(suspensions)
        return made

    def _promoted_too_late(self, day: dt.date, slot_time: str, promoted_at: dt.datetime | None) -> bool:
        """Whether a place in line was given its seat with less than ``MOVE_LEAD`` to get
        there: the lead a clerk's move gives a citizen."""
        if promoted_at is None:
            return False
        return self.clock.aware(promoted_at) > self._starts(day, slot_time) - MOVE_LEAD

    def _starts(self, day: dt.date, slot_time: str) -> dt.datetime:
        """When a slot begins, in the offices' time."""
        return dt.datetime.combine(day, dt.time.fromisoformat(slot_time), tzinfo=self.clock.tz)

    def _absent_from(self, day: dt.date, slot_time: str) -> dt.datetime:
        """The earliest a booking of this slot may be marked absent: its start and the grace."""
        return self._starts(day, slot_time) + dt.timedelta(minutes=self.no_shows.grace_minutes)

    def _suspension_ends(self, today: dt.date) -> dt.date:
        """The end of a suspension made ``today``: the first day the citizen may book again."""
        return today + dt.timedelta(days=self.no_shows.suspension_days)

    async def walk_in(
        self,
        *,
        session: AsyncSession,
        staff: StaffPrincipal,
        office_code: str,
        national_id: str,
        service_code: str,
        mobile: str | None,
    ) -> BookingOut:
        """A citizen at the counter without a booking takes the next free seat, like anyone else."""
        office = await self._office(session, staff, office_code)
        booked = await self.bookings.book(
            sessions=Within(session),
            mobile=normalize_mobile(mobile) if mobile else "",
            request=BookingCreate(
                national_id=national_id,
                office_code=office.code,
                service_code=service_code,
                date=self.clock.today().isoformat(),
            ),
            idempotency_key=None,
            channel=Channel.WALK_IN,
        )
        await self._audit(
            session, staff, office, "booking.walk_in", booked.booking.tracking_code, None, booked.booking.slot
        )
        await session.commit()
        return booked.booking

    async def walk_in_today(
        self, *, session: AsyncSession, staff: StaffPrincipal, office_code: str, national_id: str, service_code: str
    ) -> str | None:
        """The tracking code of the citizen's walk-in at this office today for the service, still
        open (booked or checked in): what a second tap on «ثبت مراجعهٔ حضوری» made already."""
        office = await self._office(session, staff, office_code)
        try:
            national_id = normalize_national_id(national_id)
        except InvalidInput:
            return None
        return await session.scalar(
            select(Booking.tracking_code).where(
                Booking.office_id == office.id,
                Booking.date == self.clock.today(),
                Booking.national_id == national_id,
                Booking.service_code == service_code.strip(),
                Booking.channel == Channel.WALK_IN,
                Booking.status.in_((BookingStatus.BOOKED, BookingStatus.CHECKED_IN)),
            )
        )

    async def report_waiting(
        self, *, session: AsyncSession, staff: StaffPrincipal, office_code: str, waiting: int
    ) -> None:
        office = await self._office(session, staff, office_code)
        await self.load.report_waiting(office_code=office.code, count=waiting)
        # A fifth of the public ranking: who said how many is kept, as for every other lever.
        await self._audit(session, staff, office, "office.waiting", office.code, None, {"waiting": waiting})
        await session.commit()

    async def _audit(
        self,
        session: AsyncSession,
        staff: StaffPrincipal,
        office: Office,
        action: str,
        target: str,
        before: Any,
        after: Any,
    ) -> None:
        await audit(
            session,
            actor=staff,
            action=action,
            target=target,
            office_id=office.id,
            before=before,
            after=after,
            at=self.clock.now(),
        )


def _entry(booking: Booking, service_name_fa: str) -> QueueEntry:
    return QueueEntry(
        tracking_code=booking.tracking_code,
        slot=booking.slot_time,
        service_code=booking.service_code,
        service_name_fa=service_name_fa,
        status=booking.status.value,
        channel=booking.channel.value,
        national_id=mask_national_id(booking.national_id),
    )


def _slot(overflow: Overflow) -> SlotKey:
    return (overflow.office_code, overflow.day, overflow.pool, overflow.time)


def _without_own_pool(template: WeeklyTemplate, rules: list[DayRule]) -> str | None:
    """The first service ``rules`` give a counter of its own that ``template`` does not (the
    template alone says which pool a service books from: ``pool_for``), or None."""
    named = sorted({rule.service for rule in rules if rule.service is not None})
    return next((service for service in named if pool_for(template, service) != service), None)


async def _template_of(session: AsyncSession, office: Office) -> WeeklyTemplate:
    """The office's weekly template as the record has it (none yet: no day open)."""
    raw = await session.scalar(select(CapacityTemplate.template).where(CapacityTemplate.office_id == office.id))
    return decode_template(raw) if raw else WeeklyTemplate(days={})


async def _province_of(session: AsyncSession, office: Office) -> int:
    return int((await session.execute(select(City.province_id).where(City.id == office.city_id))).scalar_one())
