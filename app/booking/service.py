"""Booking a seat: Redis decides who gets it, SQL remembers it.

The order is fixed, and each step undoes the ones before it when it fails:
1. the citizen's limits (a script on the citizen's keys, which span every office);
2. the seat (a script on the office's keys: status, seats left and idempotency at once);
3. the row in SQL, committed before the citizen is told "booked".
A confirmed booking is therefore always in the record; a failed one leaves no seat taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import msgspec
from redis.exceptions import RedisError
from sqlalchemy import Select, case, delete, literal, select, update
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncSession

from app.booking.errors import (
    BookingCheckedIn,
    BookingNotActive,
    BookingNotFound,
    BookingStarted,
    NotYourBooking,
    TooManyFromMobile,
    TrackingCodeTaken,
)
from app.booking.models import ACTIVE_STATUSES, Booking, BookingStatus, Channel, NewBooking
from app.booking.schemas import BookingCreate, BookingOut, WaitlistJoin
from app.booking.tracking import new_tracking_code, normalize_tracking_code
from app.booking.writer import (
    CommitOutcomeUnknown,
    Counted,
    CountingPaused,
    GroupCommit,
    hold_off_recounts,
    refuse_while_recounting,
)
from app.capacity import keys
from app.capacity.errors import (
    AlreadyBookedThatDay,
    BookingSuspended,
    CapacityRebuilding,
    DuplicateRequest,
    OfficeClosed,
    TooManyBookings,
)
from app.capacity.scripts import as_text
from app.capacity.service import (
    Capacity,
    Promotion,
    Reserved,
    ReservedButFailed,
    Seat,
    SeatRequest,
    day_room,
    first_bookable_time,
    load_caps,
    load_plans,
)
from app.clock import Clock
from app.db import RECORD_AWAY, RECORD_OR_REDIS_AWAY, OnDemand, Sessions, commit_outcome
from app.errors import DomainError, IdempotencyKeyReused, InvalidInput, ServiceUnavailable
from app.identity import mask_mobile, mask_national_id, normalize_national_id
from app.locale import jalali_date, jalali_datetime, normalize_digits, parse_date, to_persian_digits
from app.observability import BOOKINGS, REJECTIONS
from app.offices.directory import OfficeDirectory
from app.offices.models import Office, OfficeStatus, Service
from app.offices.service import BookableOffice, normalize_code
from app.ratelimit import RateLimiter
from app.redis import ScriptCall
from app.settings import parse_limit
from app.sms.service import Messenger

log = logging.getLogger(__name__)

UNAVAILABLE = (RedisError, OperationalError, InterfaceError, PoolTimeout, ConnectionError, TimeoutError)
"""A Redis or record that did not answer (app.web answers these 503); not a bug's error."""

_SLOT_RE = re.compile(r"([0-9]{1,2}):([0-9]{2})")
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,64}")
"""An Idempotency-Key (and a complaint form's key): 1 to 64 visible ASCII characters."""


SEATS_PER_TRIP = 500
"""Seats given back on one trip to Redis; whoever they promote is recorded before the next trip."""
UNDO_RETRY_SECONDS = (0.5, 1, 2, 5, 10, 20, 30, 60, 60, 120, 120, 180)
"""The waits between tries to give back what a failed booking took while Redis was away
(``BookingService._undo_later``): about ten minutes in all."""


class BookingRules(msgspec.Struct, frozen=True):
    max_active: int
    per_mobile: str
    """Bookings one mobile may make on the web and by SMS, as count/seconds (a join of a
    waitlist is one: it becomes a booking by itself)."""


MOBILE_ALLOWANCE = "book-mobile"


class _Allowance:
    """One of the bookings a mobile may make (NOBAT_BOOKINGS_PER_MOBILE): ``call`` takes it
    (None: not counted), and ``taken`` says it is to be given back if the request makes no
    booking; ``answered``, that Redis answered the take (taken, then, for certain). A booking
    asks for it on its own trip to Redis (a trip of its own cost 7% of the booking rate)."""

    __slots__ = ("answered", "call", "mobile", "taken")

    def __init__(self, mobile: str, call: ScriptCall | None) -> None:
        self.mobile = mobile
        self.call = call
        self.taken = False
        self.answered = False


class Booked(msgspec.Struct, frozen=True):
    booking: BookingOut
    replay: bool


def parse_slot(value: str) -> str:
    match = _SLOT_RE.fullmatch(normalize_digits(value).strip())
    if not match or int(match[1]) > 23 or int(match[2]) > 59:
        raise InvalidInput("slot", "A slot is a time like 09:30.", detail_fa="زمان نوبت باید مانند ۹:۳۰ باشد.")
    return f"{int(match[1]):02d}:{match[2]}"


def parse_idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not IDEMPOTENCY_KEY.fullmatch(value):
        raise InvalidInput(
            "Idempotency-Key",
            "Idempotency-Key must be 1 to 64 visible ASCII characters.",
            detail_fa="سرآیند Idempotency-Key باید ۱ تا ۶۴ نویسهٔ لاتین باشد.",
        )
    return value


def _promoted(tracking_codes: Iterable[str]) -> Select[Any]:
    """What a promotion of these bookings wrote, for ``commit_outcome``: a row when none of them
    is still waitlisted. (One moved on since, cancelled say, counts as promoted: its seat stays
    counted, the safe side.)"""
    waiting = select(Booking.id).where(
        Booking.tracking_code.in_(list(tracking_codes)), Booking.status == BookingStatus.WAITLISTED
    )
    return select(literal(1)).where(~waiting.exists())


def _cancelled(booking_id: int, at: dt.datetime) -> Select[Any]:
    """What a cancel of this booking at ``at`` wrote, for ``commit_outcome``."""
    return select(Booking.id).where(
        Booking.id == booking_id, Booking.status == BookingStatus.CANCELLED, Booking.cancelled_at == at
    )


class BookingService:
    def __init__(
        self,
        *,
        capacity: Capacity,
        clock: Clock,
        rules: BookingRules,
        messenger: Messenger,
        writer: GroupCommit,
        offices: OfficeDirectory,
        limiter: RateLimiter,
    ) -> None:
        self.writer = writer
        self.limiter = limiter
        self.offices = offices
        self.capacity = capacity
        self.clock = clock
        self.rules = rules
        self.messenger = messenger
        self._undoing: set[asyncio.Task[None]] = set()  # kept, or the loop may drop them half-way
        self._closing = asyncio.Event()  # an undo waiting to try again tries at once, for the last time

    async def book(
        self,
        *,
        sessions: Sessions,
        mobile: str,
        request: BookingCreate,
        idempotency_key: str | None,
        channel: Channel = Channel.WEB,
    ) -> Booked:
        allowance = self._allowance(mobile, channel)
        try:
            async with OnDemand(sessions) as record:
                attempt = functools.partial(
                    self._book,
                    record=record,
                    mobile=mobile,
                    request=request,
                    idempotency_key=idempotency_key,
                    channel=channel,
                    allowance=allowance,
                )
                try:
                    booked = await attempt()
                except TrackingCodeTaken:  # nothing booked: once more, with a new code
                    await self._give_back_allowance(allowance)  # taken again by the attempt
                    booked = await attempt()
        except Exception as error:
            # Not a booking made, so not one of the mobile's. (A cancelled request is not
            # given back: its booking may still be committed.)
            await self._give_back_allowance(allowance)
            if isinstance(error, DomainError):
                REJECTIONS.labels(error.code).inc()
            elif isinstance(error, UNAVAILABLE):
                # Answered 503 as a ServiceUnavailable is: "a surge of service_unavailable is
                # us" (docs/deployment.md) must count a Redis or record that did not answer.
                REJECTIONS.labels(ServiceUnavailable.code).inc()
            raise
        if booked.replay:
            await self._give_back_allowance(allowance)
        else:
            BOOKINGS.labels(channel.value).inc()
        return booked

    def _allowance(self, mobile: str, channel: Channel) -> _Allowance:
        # A walk-in is booked by the clerk, who sees the citizen: not one of the mobile's.
        if channel == Channel.WALK_IN:
            return _Allowance(mobile, None)
        return _Allowance(mobile, self.limiter.take_call(MOBILE_ALLOWANCE, mobile, self.rules.per_mobile))

    def _past_allowance(self, allowance: _Allowance, retry_after: int) -> TooManyFromMobile:
        """Redis refused the take (``retry_after``: the seconds until its window ends), so
        nothing is to be given back."""
        allowance.taken = False
        return TooManyFromMobile(parse_limit(self.rules.per_mobile)[0], retry_after)

    async def _give_back_allowance(self, allowance: _Allowance) -> None:
        if not allowance.taken:
            return
        allowance.taken = False

        async def give_back() -> bool:
            await self.limiter.give_back(MOBILE_ALLOWANCE, allowance.mobile)
            return True

        try:
            await give_back()
        except RedisError as error:
            if not allowance.answered:  # the take's own trip failed: it most likely never ran
                log.warning("a booking allowance may not have been given back: %s", type(error).__name__)
                return
            # Taken for certain: given back once Redis answers (left, the mobile made one
            # booking fewer until its window ended). A give-back whose answer was lost and is
            # sent again lets it make one more: the allowance stops abuse, and one over it
            # is no harm to anyone.
            log.warning("a booking allowance is given back once Redis answers: %s", type(error).__name__)
            self._later(mask_mobile(allowance.mobile), give_back, "a booking allowance was not given back")

    async def _book(
        self,
        *,
        record: OnDemand,
        mobile: str,
        request: BookingCreate,
        idempotency_key: str | None,
        channel: Channel,
        allowance: _Allowance,
    ) -> Booked:
        self.capacity.require_ready()
        mark = self.capacity.mark  # the count the seat is taken in, as this instance knows it
        national_id = normalize_national_id(request.national_id)
        day = parse_date(request.date)
        wanted = parse_slot(request.slot) if request.slot else None
        idempotency_key = parse_idempotency_key(idempotency_key)
        now = self.clock.now()
        today = now.date()
        self.capacity.check_horizon(day, today)
        office = await self.offices.bookable(
            office_code=request.office_code, service_code=request.service_code, session=record.opened
        )

        # No lookup of the Idempotency-Key here: the reserve script answers REPLAY for a key it
        # has seen, and the unique (mobile, key) constraint catches one it has forgotten (after
        # 24 hours, or a rebuild); both paths below answer with the earlier booking.

        tracking_code = new_tracking_code()
        idempotency = (mobile, idempotency_key) if idempotency_key else None
        seat = SeatRequest(
            office_code=office.code,
            day=day,
            pool=office.pool,
            time=wanted,
            not_before=first_bookable_time(now, day),
            tracking_code=tracking_code,
            idempotency=idempotency,
        )

        # A Redis failure anywhere below is a 503 (app.web); each step undoes the one before.
        # The mobile's allowance, the citizen's limits and the seat are asked for in one round
        # trip: whichever is refused, the others are given back.
        # Taken unless Redis says not: a trip whose answer is lost may have taken it.
        allowance.taken = allowance.call is not None
        try:
            hold_error, sent_before, outcome, allowance_reply = await self.capacity.hold_and_reserve(
                national_id=national_id,
                today=today,
                service_code=office.service_code,
                limit=self.rules.max_active,
                seat=seat,
                walk_in=channel == Channel.WALK_IN,  # a suspension bars web and SMS booking only
                along=allowance.call,
            )
        except RedisError as error:
            if isinstance(error, ReservedButFailed):  # a cluster's node away, the seat taken on another
                try:
                    await self._give_back(await record.session(), office, day, error.reserved, idempotency)
                except RECORD_OR_REDIS_AWAY:
                    log.warning("a seat a failed booking took stays counted until the recount", exc_info=True)
            await self._forget_or_later(national_id, seat)
            raise
        allowance.answered = True
        if allowance_reply:  # refused: the seconds until the mobile may book again
            refused = self._past_allowance(allowance, int(allowance_reply))
            if hold_error is None:
                await self._unhold_or_later(national_id, seat)
            hold_error = refused
        if hold_error is not None:
            if isinstance(outcome, Reserved) and not outcome.replay:
                try:
                    await self._give_back(await record.session(), office, day, outcome, idempotency)
                except RedisError:
                    # RELEASE's answer lost, it may have run: the seat stays counted (the safe
                    # side), and the key is let go of once Redis answers, so that a retry books.
                    self._undo_later(national_id, seat, None)
                    raise
            # A retry of a booking that went through holds the citizen's limit (and one of the
            # mobile's) itself, and a suspension since (no-shows) does not undo a booking made.
            refusals_of_a_retry = (AlreadyBookedThatDay, TooManyBookings, TooManyFromMobile, BookingSuspended)
            if isinstance(hold_error, refusals_of_a_retry) and idempotency_key:
                if earlier := await self.by_idempotency_key(await record.session(), mobile, idempotency_key):
                    return await self._replay(await record.session(), earlier, national_id, office, day, wanted)
                if await self.capacity.idempotency_seen(office_code=office.code, owner=mobile, key=idempotency_key):
                    raise DuplicateRequest() from None
            raise hold_error
        # The same request held before: a double tap, or a retry of a booking made a day ago
        # whose key Redis has forgotten, which would be answered "full" (or take a second seat
        # for a moment). The record is asked; only then, so a booking's way is not slowed.
        if (
            sent_before
            and idempotency_key
            and (earlier := await self._earlier_with_key(record, mobile, idempotency_key))
        ):
            session = await record.session()
            if isinstance(outcome, Reserved) and not outcome.replay:
                await self._undo(session, office, day, outcome, national_id, seat)  # as after a failed insert
            else:
                await self._unhold_or_later(national_id, seat)
            return await self._replay(session, earlier, national_id, office, day, wanted)
        try:
            if isinstance(outcome, DomainError):
                raise outcome
            if outcome is None:  # the day is not in Redis yet: count it in from the record first
                await self._materialise(await record.session(), office.code, day)
                outcome = await self._reserve(await record.session(), seat)
            earlier = None
            if outcome.replay:
                # A key whose booking the record lacks, taken long enough ago, is a dead
                # request's: let go of (``Capacity.forget_abandoned``), this retry books. Left,
                # every retry (and the SMS job's carrying out of a message whose instance was
                # killed) was told "in progress" for a day.
                earlier = await self._by_tracking_code(await record.session(), outcome.tracking_code)
                if earlier is None and await self.capacity.forget_abandoned(seat, outcome.tracking_code):
                    outcome = await self._reserve(await record.session(), seat)
            reserved = outcome
        except RedisError:
            await self._forget_or_later(national_id, seat)
            raise
        except BaseException:
            await self._unhold_or_later(national_id, seat)
            raise

        if reserved.replay:
            # Another request with this Idempotency-Key took the seat; answer with its booking.
            await self._unhold_or_later(national_id, seat)
            if earlier is None or earlier.tracking_code != reserved.tracking_code:
                earlier = await self._by_tracking_code(await record.session(), reserved.tracking_code)
            if earlier is None:
                raise DuplicateRequest()
            return await self._replay(await record.session(), earlier, national_id, office, day, wanted)

        booking = NewBooking(
            tracking_code=tracking_code,
            office_id=office.id,
            service_code=office.service_code,
            national_id=national_id,
            mobile=mobile,
            date=day,
            slot_time=reserved.time,
            pool=office.pool,
            status=BookingStatus.BOOKED,
            channel=channel,
            idempotency_key=idempotency_key,
            created_at=now,
        )
        view = booking_out(
            booking, office_code=office.code, office_name_fa=office.name_fa, service_name_fa=office.service_name_fa
        )
        # The confirmation SMS is part of the same transaction: sent if and only if the
        # booking is. (Reminders need nothing here: app.booking.reminders finds them due.)
        rows = [booking.row()]
        sms_ids = []
        if confirmation := self.messenger.outbox_row(
            to=mobile,
            # Whose it is, masked: a parent who booked by SMS for a child, then for themselves,
            # sees which national ID each is under (the counter asks for that one).
            body=f"نوبت شما ثبت شد. کد رهگیری: {view.tracking_code}\n{office.name_fa} (کد {office.code})\n"
            f"{office.service_name_fa}\n{view.when_fa}\nکد ملی: {mask_national_id(national_id)}",
            kind="booking_confirmed",
        ):
            rows.append(confirmation)
            sms_ids.append(confirmation[1]["id"])
        try:
            # The booking is a saga across Redis and SQL, so it is committed here, not in the
            # request scope: only a committed row may be confirmed, and only a failed commit
            # may give the seat back. Concurrent bookings share the commit (app.booking.writer).
            counted = Counted(mark, (office.code, day), reserved.counted_in)  # committed in it only
            await self.writer.write(record.opened, rows, sms_ids, counted=counted)
        except CommitOutcomeUnknown as error:
            session = await record.session()
            await session.rollback()
            return await self._after_lost_commit(session, error, view, national_id, seat, reserved)
        except asyncio.CancelledError:
            # The request was cancelled (the client left, a shutdown) while its rows were on
            # their way: the commit goes on without it and may land, so the seat stays counted.
            raise
        except BaseException as error:
            session = await record.session()
            await session.rollback()
            await self._undo(session, office, day, reserved, national_id, seat)
            if isinstance(error, IntegrityError):
                if idempotency_key and (earlier := await self.by_idempotency_key(session, mobile, idempotency_key)):
                    return await self._replay(session, earlier, national_id, office, day, wanted)
                if await self._by_tracking_code(session, tracking_code) is not None:  # not ours: not committed
                    raise TrackingCodeTaken() from error
                raise AlreadyBookedThatDay() from error
            if isinstance(error, CountingPaused):
                raise CapacityRebuilding() from error
            if isinstance(error, (OperationalError, SQLAlchemyError, OSError)):
                log.warning("booking not recorded: %s", type(error).__name__, exc_info=error)
                raise ServiceUnavailable("The record is unavailable; nothing was booked.") from error
            raise
        return Booked(booking=view, replay=False)

    async def _hold(
        self, national_id: str, today: dt.date, day: dt.date, office: BookableOffice, tracking_code: str
    ) -> None:
        await self.capacity.hold(
            national_id=national_id,
            today=today,
            day=day,
            service_code=office.service_code,
            tracking_code=tracking_code,
            limit=self.rules.max_active,
        )

    async def _reserve(self, session: AsyncSession, seat: SeatRequest) -> Reserved:
        for _ in range(2):
            reserved = await self.capacity.reserve(seat)
            if reserved is not None:
                return reserved
            # The day is not in Redis yet (it just entered the horizon, or Redis lost it).
            await self._materialise(session, seat.office_code, seat.day)
        raise ServiceUnavailable("Capacity for this day could not be prepared.")

    async def _materialise(self, session: AsyncSession, office_code: str, day: dt.date) -> None:
        """Count a day into Redis from the record. An office with no plan at all is closed
        (409), not a day that could not be prepared: a 503 had its clients retry for ever."""
        if not await self.capacity.materialise_day(session=session, office_code=office_code, day=day):
            raise OfficeClosed()

    async def _after_lost_commit(
        self,
        session: AsyncSession,
        error: CommitOutcomeUnknown,
        view: BookingOut,
        national_id: str,
        seat: SeatRequest,
        reserved: Reserved,
    ) -> Booked:
        """The commit's answer was lost, and the record could not say whether the batch landed
        (the writer asks first: app.booking.writer), or it is the SQLite record's. If the
        record has the booking now, it is the citizen's: confirm it (its SMS, committed in the
        outbox, goes out with the sweep). Either way the seat is not given back now: the
        commit may still land, and a seat given back under a recorded booking is sold twice.
        Not in the record, or the record not answering (a failover, most often), it stays
        counted (the safe side) until the minute's job finds that the commit did not land
        (``settle_bookings``), and the citizen's limit and Idempotency-Key are freed so that a
        retry can book. A commit that landed after all is caught by the record (its unique
        Idempotency-Key answers the retry with it, the one-a-day rule refuses one without),
        and the job counts it against the citizen's limit again. (Left held while the record could not
        be asked, they had refused the retry, and the seat was never left to the job.)"""
        try:
            recorded = await self._by_tracking_code(session, seat.tracking_code)
        except RECORD_AWAY:
            recorded = None  # cannot say: as one not in the record, left to the job
        if recorded is not None:
            log.warning("a booking's commit answer was lost; the record has it: confirmed")
            return Booked(booking=view, replay=False)
        log.warning("a booking's commit answer was lost; its seat is settled later", exc_info=error)
        await self._forget_or_later(national_id, seat)
        try:
            given = Seat(seat.office_code, seat.day, seat.pool, reserved.time, reserved.counted_in)
            await self.capacity.settle_booking_later(seat.tracking_code, error.xid, given)
        except RedisError:
            log.exception("the seat of a lost commit stays counted until a rebuild: %s", seat.tracking_code)
        raise ServiceUnavailable("The record did not answer; try again in a few seconds.") from error

    async def _undo(
        self,
        session: AsyncSession,
        office: BookableOffice,
        day: dt.date,
        reserved: Reserved,
        national_id: str,
        seat: SeatRequest,
    ) -> None:
        """Give back what a booking the record refused had taken: the citizen's limit, the seat
        and its Idempotency-Key. With Redis away a moment, they are given back once it answers
        (``_undo_later``): left taken, the citizen was refused "already booked" for a booking
        that does not exist until the day went by, a retry with the key was "in progress" for
        a day, and the seat was sold to nobody (nothing recounts a Redis that came back as it was)."""
        try:
            await self.capacity.unhold(national_id=national_id, tracking_code=reserved.tracking_code)
        except RedisError:
            log.warning("a failed booking's hold and seat are given back once Redis answers", exc_info=True)
            given = Seat(office.code, day, office.pool, reserved.time, reserved.counted_in)
            self._undo_later(national_id, seat, given)  # RELEASE not sent: the seat is the job's to free
            return
        try:
            await self._give_back(session, office, day, reserved, seat.idempotency)
        except RedisError:
            # Whether RELEASE ran is not known (its answer lost): freed again by the job, the
            # seat would be sold twice. It stays counted (the safe side) until a rebuild; the
            # key is let go of, so that a retry books.
            log.exception("could not give back a seat after a failed insert")
            self._undo_later(national_id, seat, None)
        except RECORD_AWAY:
            log.exception("could not record whom a seat given back went to")

    async def _unhold_or_later(self, national_id: str, seat: SeatRequest) -> None:
        """Give back the hold of a request that made nothing; with Redis away, once it answers
        (left taken, the citizen was refused "already booked" that day with no booking)."""
        try:
            await self.capacity.unhold(national_id=national_id, tracking_code=seat.tracking_code)
        except RedisError:
            self._undo_later(national_id, seat, None)

    async def _forget_or_later(self, national_id: str, seat: SeatRequest) -> None:
        """``Capacity.forget_unanswered``, and again once Redis answers if a mark did not land:
        left, the citizen was refused "already booked" that day, and the request's retry
        answered with a booking nowhere, until the night's recount or the key's day ran out."""
        if not await self.capacity.forget_unanswered(national_id=national_id, seat=seat):
            self._undo_later(national_id, seat, None)

    def _undo_later(self, national_id: str, seat: SeatRequest, given: Seat | None) -> None:
        """Once Redis answers: the citizen's limit and the request's Idempotency-Key freed (marked
        forgotten: a late script of the request takes nothing), and ``given``, a seat whose
        RELEASE was never sent, left to the minute's job, which frees it once the record says
        the booking is not there (``settle_bookings``). Tried for about ten minutes, and once
        more as the instance stops (``close``)."""

        left = given

        async def undo() -> bool:
            nonlocal left
            if left is not None:
                await self.capacity.redis.ping()  # answering again: the seat's one try
                # Sent once only: a write whose answer was lost may have landed, and one
                # written again after the job had freed the seat would have it freed twice.
                to_settle, left = left, None
                try:
                    await self.capacity.settle_booking_later(seat.tracking_code, None, to_settle)
                except RedisError:
                    log.exception("a failed booking's seat stays counted until a rebuild: %s", seat.tracking_code)
            return await self.capacity.forget_unanswered(national_id=national_id, seat=seat)

        self._later(seat.tracking_code, undo, "a failed booking's hold and key stay taken")

    def _later(self, name: str, step: Callable[[], Awaitable[bool]], left_as_it_is: str) -> None:
        """Run ``step`` until it says it is done, Redis answering, for about ten minutes and once
        more as the instance stops (``close``); if it never is, ``left_as_it_is`` is logged,
        with ``name``."""

        async def run() -> None:
            for wait in UNDO_RETRY_SECONDS:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), wait)
                try:
                    if await step():
                        return
                except RedisError:
                    pass
                if self._closing.is_set():
                    break
            log.error("%s: %s", left_as_it_is, name)

        task = asyncio.create_task(run(), name=f"{name}: {left_as_it_is}")
        self._undoing.add(task)
        task.add_done_callback(self._undoing.discard)

    async def close(self, give_up_after: float) -> None:
        """As the instance stops: the undos still waiting for Redis try once more now, rather
        than minutes later in an instance that no longer exists (they had been dropped with
        the event loop, and nothing said so). Those that do not end within ``give_up_after`` s are
        named in the log: their holds and keys stay taken until a rebuild."""
        self._closing.set()
        if not self._undoing:
            return
        _, unfinished = await asyncio.wait(set(self._undoing), timeout=give_up_after)
        for task in unfinished:
            task.cancel()
            log.error("the instance stopped; %s", task.get_name())

    async def _give_back(
        self,
        session: AsyncSession,
        office: BookableOffice,
        day: dt.date,
        reserved: Reserved,
        idempotency: tuple[str, str] | None,
    ) -> None:
        """Give back a seat this request reserved and never recorded: unless the day has been
        counted again from the record since (``Reserved.counted_in``), which left it out already."""
        await self.free_seat(
            session=session,
            office_code=office.code,
            day=day,
            pool=office.pool,
            time=reserved.time,
            idempotency=idempotency,
            counted_in=reserved.counted_in,
        )

    async def _replay(
        self,
        session: AsyncSession,
        earlier: Booking,
        national_id: str,
        office: BookableOffice,
        day: dt.date,
        wanted: str | None,
    ) -> Booked:
        """The booking an earlier request with this Idempotency-Key made, if this request is
        that one again. One the office has moved since (same day, same service) is answered
        where it is now: the citizen's retry is still the same request."""
        same_request = (
            earlier.national_id == national_id and earlier.service_code == office.service_code and earlier.date == day
        )
        if earlier.moved_from_office_id is None:
            same_place = earlier.office_id == office.id and (wanted is None or earlier.slot_time == wanted)
        else:  # its time may have changed, and its office
            same_place = office.id in (earlier.office_id, earlier.moved_from_office_id)
        if not (same_request and same_place):
            raise IdempotencyKeyReused()
        if earlier.office_id == office.id:
            view = booking_out(
                earlier, office_code=office.code, office_name_fa=office.name_fa, service_name_fa=office.service_name_fa
            )
        else:
            _, office_code, office_name_fa, service_name_fa = await self._load(session, earlier.tracking_code)
            view = booking_out(
                earlier, office_code=office_code, office_name_fa=office_name_fa, service_name_fa=service_name_fa
            )
        return Booked(booking=view, replay=True)

    async def _earlier_with_key(self, record: OnDemand, mobile: str, key: str) -> Booking | None:
        """``by_idempotency_key``, or None when the record cannot say now: the booking then goes
        on as a new one, and a copy is caught at its insert by the unique key (whose failure
        gives back all the request took) rather than left holding its seat and hold."""
        try:
            return await self.by_idempotency_key(await record.session(), mobile, key)
        except RECORD_AWAY:
            with contextlib.suppress(SQLAlchemyError, OSError):
                await (await record.session()).rollback()
            return None

    async def by_idempotency_key(self, session: AsyncSession, mobile: str, key: str) -> Booking | None:
        return await session.scalar(select(Booking).where(Booking.mobile == mobile, Booking.idempotency_key == key))

    async def _by_tracking_code(self, session: AsyncSession, code: str) -> Booking | None:
        return await session.scalar(select(Booking).where(Booking.tracking_code == code))

    async def get(self, *, session: AsyncSession, tracking_code: str) -> BookingOut:
        booking, office_code, office_name_fa, service_name_fa = await self._load(session, tracking_code)
        out = booking_out(
            booking, office_code=office_code, office_name_fa=office_name_fa, service_name_fa=service_name_fa
        )
        if booking.status is BookingStatus.WAITLISTED:
            with contextlib.suppress(RedisError):  # the place is a courtesy: the booking answers without it
                place = await self.capacity.place_in_line(
                    office_code=office_code, day=booking.date, pool=booking.pool, tracking_code=booking.tracking_code
                )
                out = msgspec.structs.replace(out, waitlist_position=place)
        return out

    async def _load(
        self, session: AsyncSession, tracking_code: str, *, lock: bool = False
    ) -> tuple[Booking, str, str, str]:
        code = normalize_tracking_code(tracking_code)
        query = (
            select(Booking, Office.code, Office.name_fa, Service.name_fa)
            .join(Office, Office.id == Booking.office_id)
            .join(Service, Service.code == Booking.service_code)
            .where(Booking.tracking_code == code)
        )
        if lock:
            query = query.with_for_update(of=Booking)
        row = (await session.execute(query)).first()
        if row is None:
            raise BookingNotFound()
        return row[0], row[1], row[2], row[3]

    async def cancel(self, *, session: AsyncSession, tracking_code: str, mobile: str) -> BookingOut:
        booking, office_code, office_name_fa, service_name_fa = await self._load(session, tracking_code, lock=True)
        if booking.mobile != mobile:
            raise NotYourBooking()
        if booking.status == BookingStatus.CANCELLED:
            # A retry of a cancel whose answer was lost: the limit it frees may not have been
            # freed then (app.capacity's HOLD), and freeing it twice is harmless.
            await self.unhold(booking)
        if booking.status not in ACTIVE_STATUSES:
            raise BookingNotActive(booking_status=booking.status.value)
        if booking.status == BookingStatus.CHECKED_IN:
            # In the room, in the queue: a seat freed now would be sold to someone else.
            raise BookingCheckedIn()
        now = self.clock.now()
        waitlisted = booking.status == BookingStatus.WAITLISTED
        starts = (booking.date, "99:99" if waitlisted else booking.slot_time)
        if starts <= (now.date(), now.strftime("%H:%M")):
            raise BookingStarted()
        # Compare-and-set, so a check-in or a move that landed since the read is not undone
        # (nor the moved seat's old one given back twice: SQLite has no row locks).
        changed = await session.execute(
            update(Booking)
            .where(
                Booking.id == booking.id,
                Booking.status == booking.status,
                Booking.office_id == booking.office_id,
                Booking.slot_time == booking.slot_time,
                Booking.pool == booking.pool,
            )
            .values(status=BookingStatus.CANCELLED, cancelled_at=now)
            .execution_options(synchronize_session=False)
        )
        if changed.rowcount != 1:  # type: ignore[attr-defined]
            await session.rollback()
            raise BookingNotActive(booking_status="changed")
        booking.status = BookingStatus.CANCELLED
        booking.cancelled_at = now
        view = booking_out(
            booking, office_code=office_code, office_name_fa=office_name_fa, service_name_fa=service_name_fa
        )
        self.messenger.queue(
            session,
            to=booking.mobile,
            body=f"نوبت {view.tracking_code} در {office_name_fa} برای {view.when_fa} لغو شد.",
            kind="booking_cancelled",
        )
        if not self.capacity.ready:  # a recount known of already: refused before the barrier waits for it
            await session.rollback()
            raise CapacityRebuilding()
        office_day = (office_code, booking.date)
        counted_in = ""
        xid = None  # not known if the record fails before it answers: nothing is written then
        try:
            xid = await hold_off_recounts(session)  # its id, for commit_outcome; a recount counts it in
            # The count the seat is in before the record lets it go: a count from the record
            # after the commit leaves it out, and the release below must then free nothing.
            # Read under the barrier: read before it, a whole recount could run in between
            # (a stalled request), counting the booking as active, and the release with the
            # older count freed nothing: the seat unsold until the next night. (Redis failing
            # here answers 503 with nothing committed.)
            await refuse_while_recounting(session, self.capacity.may_commit)
            if not waitlisted:  # after it: read before, a recount could end in between
                counted_in = (await self.capacity.counts([office_day]))[office_day]
            await session.commit()
        except RECORD_AWAY as error:
            # Its answer lost (a failover), the commit may have landed. The record is asked:
            # landed, this is the one request to free the seat (a retry finds the booking
            # cancelled and frees nothing), so it goes on as a cancel that was answered.
            session.expunge(booking)  # kept as read: the rollback would expire it
            landed = await commit_outcome(session, xid, _cancelled(booking.id, now))
            if not landed:
                if landed is None:
                    # Landing later, its seat stays counted for nobody until the next rebuild
                    # (the safe side): only a job could settle it, and none does yet.
                    log.error("a cancel's commit answer was lost, and the record cannot say: %s", booking.tracking_code)
                raise ServiceUnavailable("The record is unavailable; the booking was not cancelled.") from error
            log.warning("a cancel's commit answer was lost; the record has it: cancelled")
        # The citizen's limit first, on its own: a failure to give the seat back must not
        # keep them from booking again.
        await self.unhold(booking)
        # Only after the record says "cancelled" is the seat given back: a failure here
        # leaves it counted (or given to the waitlist and not recorded), which the next
        # rebuild corrects, and never double-books it. The cancel itself is committed: 200.
        try:
            if waitlisted:
                await self.capacity.leave_waitlist(
                    office_code=office_code, day=booking.date, pool=booking.pool, tracking_code=booking.tracking_code
                )
            else:
                await self.free_seat(
                    session=session,
                    office_code=office_code,
                    day=booking.date,
                    pool=booking.pool,
                    time=booking.slot_time,
                    counted_in=counted_in,
                )
        except RECORD_OR_REDIS_AWAY:
            await session.rollback()
            log.exception(
                "cancelled booking's seat not released, or its promotion not recorded; the night's recount will"
            )
        return view

    async def unhold(self, booking: Booking) -> None:
        """Free the place in its citizen's limits of a booking no longer active (cancelled,
        served, absent), after its commit; with Redis away, once it answers. Not raised: the
        change is made, and an error would have the citizen or clerk try again, to be refused
        (and left, the hold refused the citizen that service that day, "already booked")."""
        national_id, code = booking.national_id, booking.tracking_code  # a rollback expires the row

        async def let_go() -> bool:
            await self.capacity.unhold(national_id=national_id, tracking_code=code)
            return True

        try:
            await let_go()
        except RedisError:
            log.warning("a booking no longer active is let go of by its citizen's limits once Redis answers")
            self._later(code, let_go, "a booking no longer active still counts against its citizen's limits")

    async def cancel_seatless(
        self,
        session: AsyncSession,
        bookings: list[tuple[Booking, str]],
        *,
        now: dt.datetime,
        why_fa: str,
        advice_fa: str,
    ) -> list[Booking]:
        """Cancel bookings that hold no seat to give back (waitlist entries; a slot already
        under way), each with its office's code, as they were read (compare-and-set: a row a
        citizen, a promotion or a move changed since is left alone: a block's cancellations
        had cancelled, at the office a closure had just moved it to, a booking it had read at
        the blocked one); tell each citizen, commit, then take them out of their lines and
        their citizens' limits. Those cancelled. Committed during a recount that read the
        record before, the citizens' holds and places would be counted back in: the barrier is
        held, and a recount begun meanwhile refuses it (CapacityRebuilding, rolled back)."""
        if not bookings:
            return []
        done: set[int] = set()
        await hold_off_recounts(session)
        for start in range(0, len(bookings), 300):  # a few hundred to a statement
            chunk = [booking for booking, _ in bookings[start : start + 300]]
            done.update(
                await session.scalars(
                    update(Booking)
                    .where(
                        Booking.id.in_([b.id for b in chunk]),
                        Booking.status == case({b.id: b.status for b in chunk}, value=Booking.id),
                        Booking.office_id == case({b.id: b.office_id for b in chunk}, value=Booking.id),
                        Booking.slot_time == case({b.id: b.slot_time for b in chunk}, value=Booking.id),
                    )
                    .values(status=BookingStatus.CANCELLED, cancelled_at=now)
                    .returning(Booking.id),
                    execution_options={"synchronize_session": False},
                )
            )
        cancelled = [(booking, code) for booking, code in bookings if booking.id in done]
        for booking, _ in cancelled:
            self.messenger.queue(
                session,
                to=booking.mobile,
                body=f"{why_fa} نوبت/نوبت انتظار {booking.tracking_code} شما لغو شد. {advice_fa}",
                kind="booking_cancelled",
            )
        await refuse_while_recounting(session, self.capacity.may_commit)
        await session.commit()
        for booking, code in cancelled:
            try:
                await self.capacity.leave_waitlist(
                    office_code=code, day=booking.date, pool=booking.pool, tracking_code=booking.tracking_code
                )
            except RedisError:  # a seat given to the code goes round again (``_record_promotions``)
                log.warning("a cancelled booking stays in its line until the night's recount", exc_info=True)
            await self.unhold(booking)
        return [booking for booking, _ in cancelled]

    async def end_shut_lines(self, *, session: AsyncSession, office_codes: set[str] | None = None, why_fa: str) -> int:
        """Cancel the places in lines that can never move: at an office-day that can sell no
        seat, a freed one included: its cap (an office's restriction, a crowd cap) at 0%, or a
        share of a small day that rounds to none, as JOIN_WAITLIST reckons it; or no seats
        left in the pool at all (a clerk closed the day, or cut the service's counter). Left,
        they waited for nothing until the day went by, their hold barring them from booking
        the service anywhere else that day. Each citizen is told, ``why_fa`` first, to
        book elsewhere. Commits, whatever it finds; the places cancelled. (A blocked office's
        lines go with its bookings: ``Enforcement.block``.)"""
        waiting = select(Booking, Office.code).join(Office, Office.id == Booking.office_id)
        waiting = waiting.where(Booking.status == BookingStatus.WAITLISTED, Booking.date >= self.clock.today())
        if office_codes is not None:
            waiting = waiting.where(Office.code.in_(office_codes))
        places = [(booking, code) for booking, code in await session.execute(waiting.order_by(Booking.id))]
        if not places:
            await session.commit()
            return 0
        days = [booking.date for booking, _ in places]
        caps = await load_caps(session, first=min(days), last=max(days))
        plans = {plan.code: plan for plan in await load_plans(session, codes={code for _, code in places})}
        shut: list[tuple[Booking, str]] = []
        capped: list[tuple[Booking, str, int]] = []  # a share of the day's seats: how many is it?
        for booking, code in places:
            cap = plans[code].cap(booking.date, caps)
            if plans[code].status == OfficeStatus.BLOCKED:
                continue
            if cap == 0:
                shut.append((booking, code))
            else:
                capped.append((booking, code, cap))
        if capped:
            seats = await self.capacity.pool_seats({(code, b.date, b.pool) for b, code, _ in capped})
            for booking, code, cap in capped:
                day_seats = seats.get((code, booking.date, booking.pool))
                if day_seats is not None and day_room(day_seats, 0, cap) <= 0:
                    shut.append((booking, code))
        if not shut:
            await session.commit()
            return 0
        cancelled = await self.cancel_seatless(
            session, shut, now=self.clock.now(), why_fa=why_fa, advice_fa="لطفاً روز یا دفتر دیگری را برگزینید."
        )
        return len(cancelled)

    async def end_spent_lines(self, *, session: AsyncSession) -> int:
        """End today's places in line whose every slot has begun: nobody in them can be given a
        seat any more (a seat freed now is in a slot begun, which is sold to nobody, and a
        promotion gives only slots to come). Left, their citizens waited with no word until the
        night closed the line, and kept their hold on the service that day. Each is told, once
        the office's day has no slot ahead for the line's counter. The places ended."""
        if not await self.capacity.is_built():
            return 0  # a recount: the next run
        now = self.clock.now()
        today = now.date()
        waiting = (
            select(Booking, Office.code)
            .join(Office, Office.id == Booking.office_id)
            .where(Booking.date == today, Booking.status == BookingStatus.WAITLISTED)
            .order_by(Booking.id)
        )
        places = [(booking, code) for booking, code in await session.execute(waiting)]
        ahead = first_bookable_time(now, today) or ""
        # Every office's day at once (one trip of the AutoPipeline, not one an office: the
        # country's lines are thousands of offices).
        codes = sorted({code for _, code in places})
        views = dict(
            zip(
                codes,
                await asyncio.gather(*(self.capacity.day_view(office_code=c, day=today) for c in codes)),
                strict=True,
            )
        )
        lines: dict[tuple[str, str], bool] = {}  # (office, pool): a slot still ahead?
        for booking, code in places:
            if (code, booking.pool) not in lines:
                view = views[code]
                lines[(code, booking.pool)] = view is None or any(  # a day Redis lacks: not known, kept
                    slot.pool == booking.pool and slot.time >= ahead and slot.seats > 0 for slot in view.slots
                )
        spent = [(booking, code) for booking, code in places if not lines[(code, booking.pool)]]
        if not spent:
            await session.commit()  # the read's transaction ended
            return 0
        ended = await self.cancel_seatless(
            session,
            spent,
            now=now,
            why_fa="نوبت‌های امروز این دفتر به پایان رسید و جایی برای شما خالی نشد؛",
            advice_fa="برای روز دیگری نوبت بگیرید.",
        )
        return len(ended)

    async def fill_waitlists(self, *, session: AsyncSession, office_codes: set[str] | None = None) -> None:
        """After seats were added (a capacity raise, a cap lifted), give them to the waitlists
        first. A fill that fails is left to the minute's job (``fill_waitlists_left``), and the
        change that made the room, committed already, is not answered as failed: retried, it
        would find nothing to ease, and the lines had waited in front of free seats."""
        if office_codes is None:  # everywhere (a national cap lifted): every line there is
            lines = [keys.parse_waitlist(as_text(raw)) async for raw in self.capacity.redis.scan_iter(
                match=keys.WAITLIST_PATTERN, count=1000
            )]  # fmt: skip
        else:
            # An office's lines are few and their names known: asked for by name. (A SCAN of
            # the whole keyspace for them had made a clerk's capacity change in a rush take 5 s.)
            today = self.clock.today()
            lines = await self.capacity.waitlists(
                office_codes=office_codes,
                days=self.capacity.horizon(today),
                pools=await self.offices.pools(office_codes),
            )
        seats = [Seat(code, day, pool, "") for code, day, pool in lines]
        try:
            await self.free_seats(session=session, seats=seats)
        except RECORD_OR_REDIS_AWAY:
            await self.capacity.fill_later(seats)  # Redis away still: the caller's error
            log.warning("%d lines are left to the minute's job to fill", len(seats), exc_info=True)

    async def fill_waitlists_left(self, *, session: AsyncSession) -> int:
        """Fill the lines a failed promotion left with a free seat in front of them
        (``_record_promotions``), once the promotions and bookings left untold are settled
        (``settle_promotions``, ``settle_bookings``); the minute's job. The lines filled."""
        if not await self.capacity.is_built():
            return 0  # paused for a recount, which fills every line when it ends
        await self.settle_promotions(session=session)
        await self.settle_bookings(session=session)
        lines = await self.capacity.left_to_fill()
        if lines:
            await self.free_seats(session=session, seats=list(lines))
            await self.capacity.filled(lines)  # not before: a run that fails leaves them to the next
        return len(lines)

    async def free_seat(
        self,
        *,
        session: AsyncSession,
        office_code: str,
        day: dt.date,
        pool: str,
        time: str,
        idempotency: tuple[str, str] | None = None,
        counted_in: str = "",
    ) -> None:
        """Give a seat back (``time`` empty: only seats added by a capacity change) and record
        whoever on the waitlist it went to, in the same step as the release. ``counted_in``:
        the count the seat is known to be in (see ``Seat``)."""
        now = self.clock.now()
        promotions = await self.capacity.release(
            office_code=office_code,
            day=day,
            pool=pool,
            time=time,
            not_before=first_bookable_time(now, day),
            idempotency=idempotency,
            counted_in=counted_in,
        )
        await self._record_promotions(session, [(Seat(office_code, day, pool, time), promotions)], now)

    async def free_seats(self, *, session: AsyncSession, seats: Sequence[Seat]) -> None:
        """``free_seat`` for many seats: a trip to Redis and a commit for every few hundred.
        A seat Redis failed to free stays counted (a rebuild corrects it), and a chunk whose
        promotions the record failed to take puts its citizens back in line; either error is
        raised once every chunk has been freed (the chunks after one that failed had stayed
        counted, sold to nobody, until a rebuild)."""
        now = self.clock.now()
        failed: BaseException | None = None
        for start in range(0, len(seats), SEATS_PER_TRIP):
            promoted, error = await self._release(seats[start : start + SEATS_PER_TRIP], now)
            failed = failed or error
            try:
                await self._record_promotions(session, promoted, now)
            except RECORD_OR_REDIS_AWAY as unrecorded:
                failed = failed or unrecorded
        if failed is not None:
            raise failed

    async def _release(
        self, seats: Sequence[Seat], now: dt.datetime
    ) -> tuple[list[tuple[Seat, list[Promotion]]], BaseException | None]:
        """Free the seats on one trip: whom each promoted, and the first error a call met."""
        replies = await self.capacity.release_many(seats, now=now) if seats else []
        promoted: list[tuple[Seat, list[Promotion]]] = []
        failed: BaseException | None = None
        for seat, reply in zip(seats, replies, strict=True):
            if isinstance(reply, BaseException):
                failed = failed or reply
            else:
                promoted.append((seat, reply))
        return promoted, failed

    async def _record_promotions(
        self, session: AsyncSession, promoted: list[tuple[Seat, list[Promotion]]], now: dt.datetime
    ) -> None:
        """Turn the waitlisted citizens Redis gave seats to into bookings. A seat given to
        someone who left the line a moment ago (or a second one to the same citizen) goes
        round again: to the next in line, or back to all. It goes with the count it was given
        in: a count from the record since never had it, and nothing is freed (``Seat``)."""
        while promoted:
            given: dict[str, Seat] = {}
            again: list[Seat] = []
            for seat, promotions in promoted:
                for promotion in promotions:
                    given_seat = msgspec.structs.replace(seat, time=promotion.time, counted_in=promotion.counted_in)
                    if promotion.tracking_code in given:
                        again.append(given_seat)
                    else:
                        given[promotion.tracking_code] = given_seat
            recorded, left, unrecordable = await self._promote(session, given)
            unrecorded = [(given_seat, code) for code, given_seat in given.items() if code not in recorded]
            if unrecordable is not None or not self.capacity.ready:
                # Nothing is recorded during a recount (``_promote``), nor with the record
                # failing. Handed round again, each seat would go to the next in line, not
                # recorded either, to the end of the line: instead each is freed and its
                # citizen put back at the head of it (those who had left it, not). Left as they
                # were, the citizens were out of the line until a rebuild, each holding a seat
                # nobody had booked.
                back = [(given_seat, code) for given_seat, code in unrecorded if code not in left]
                freed = [given_seat for given_seat, code in unrecorded if code in left] + again
                await self.capacity.unpromote([*reversed(back), *((given_seat, "") for given_seat in freed)])
                if unrecordable is not None and not isinstance(unrecordable, CountingPaused):
                    # Free with the line in front of it, a seat is sold to nobody: the minute's
                    # job gives it to the line (``fill_waitlists_left``). A recount's end does.
                    await self.capacity.fill_later([given_seat for given_seat, _ in unrecorded] + again)
                    raise unrecordable
                return
            again += [given_seat for given_seat, _ in unrecorded]
            promoted, failed = await self._release(again, now)
            if failed is not None:
                log.error("a seat given back stays counted until the next rebuild: %s", failed)

    async def _recounted_since_given(self, seats: list[Seat]) -> bool:
        """Whether a seat was given in a count its day is no longer in (asked under the recount
        barrier): a whole recount ran between the seat's RELEASE and here (a stalled request),
        writing the day from a record where the citizen still waits and the seat is free.
        Recorded now, the promotion had booked a seat the line would give again: the slot
        sold twice. Left to the recount, whose end gives its lines their seats."""
        now = await self.capacity.counts({(seat.office_code, seat.day) for seat in seats})
        return any(seat.counted_in != now[(seat.office_code, seat.day)] for seat in seats)

    async def _promote(
        self, session: AsyncSession, given: dict[str, Seat]
    ) -> tuple[set[str], set[str], CountingPaused | Exception | None]:
        """Book the waitlisted rows of these tracking codes at the times given, and tell them;
        one commit for every thousand. Compare-and-set: a citizen who left the line since is
        not booked. Returns the codes booked, the codes found no longer waiting, and what
        stopped it before a commit (the codes after it not tried): a recount (committed during
        the count, as for a booking, the seat could be left out of it and sold again; asked
        of Redis itself, for a job's process has no watch), or the record's error, a failed
        commit's included (its bookings counted as booked unless the record says it did
        not land: ``commit_outcome``)."""
        recorded: set[str] = set()
        left: set[str] = set()
        codes = list(given)
        for start in range(0, len(codes), 1000):
            chunk = codes[start : start + 1000]
            if not self.capacity.ready:  # checked before writing: a rollback would expire the caller's rows
                return recorded, left, CountingPaused()
            try:
                xid = await hold_off_recounts(session)
                rows = (
                    await session.execute(
                        select(Booking.id, Booking.tracking_code, Booking.mobile, Booking.date, Office.name_fa)
                        .join(Office, Office.id == Booking.office_id)
                        .where(Booking.tracking_code.in_(chunk))
                        .where(Booking.status == BookingStatus.WAITLISTED)
                    )
                ).all()
                times = {row.id: given[row.tracking_code].time for row in rows}
                booked = set()
                if rows:
                    booked = set(
                        await session.scalars(
                            update(Booking)
                            .where(Booking.id.in_(times), Booking.status == BookingStatus.WAITLISTED)
                            .values(
                                status=BookingStatus.BOOKED,
                                slot_time=case(times, value=Booking.id),
                                promoted_at=self.clock.now(),
                            )
                            .returning(Booking.id),
                            execution_options={"synchronize_session": False},
                        )
                    )
                for row in rows:
                    if row.id not in booked:
                        continue
                    when = jalali_datetime(row.date, dt.time.fromisoformat(times[row.id]))
                    self.messenger.queue(
                        session,
                        to=row.mobile,
                        body=f"یک نوبت خالی شد و به شما رسید. کد رهگیری: {row.tracking_code}\n{row.name_fa}\n{when}",
                        kind="waitlist_promoted",
                    )
                # Asked after may_commit, as the group commit asks: read before it, a recount
                # could end in between, its new counts unseen.
                allowed = await self.capacity.may_commit() and not await self._recounted_since_given(
                    [given[code] for code in chunk]
                )
            except RECORD_OR_REDIS_AWAY as error:  # Redis unasked is Redis refusing
                with contextlib.suppress(*RECORD_AWAY):  # the record may be gone altogether
                    await session.rollback()
                return recorded, left, error
            if not allowed:
                await session.rollback()
                return recorded, left, CountingPaused()
            booked_codes = {row.tracking_code for row in rows if row.id in booked}
            try:
                await session.commit()
            except RECORD_AWAY as error:
                # Its answer lost, the commit may have landed. The record is asked: a seat
                # given back for a booking that landed would be sold twice.
                landed = await commit_outcome(session, xid, _promoted(booked_codes))
                if landed is not False:  # landed, or not yet to be told: the seats are kept
                    recorded |= booked_codes
                if landed is None:
                    # In promotion order: put back, the first promoted is again the first in line.
                    promoted = [(code, seat) for code, seat in given.items() if code in booked_codes]
                    await self._settle_promotions_later(xid, promoted)
                # The citizens not booked, and the chunks after, go back to the head of their
                # lines, as after any error. (A landed commit's messages go with the sweep.)
                return recorded, left | (set(chunk) - booked_codes), error
            recorded |= booked_codes
            left |= set(chunk) - booked_codes
        return recorded, left, None

    async def _settle_promotions_later(self, xid: int | None, given: list[tuple[str, Seat]]) -> None:
        """Leave promotions whose commit could not be told of to the minute's job
        (``settle_promotions``); if even that fails, they wait for a rebuild, their seats held."""
        if xid is None or not given:
            return
        try:
            await self.capacity.settle_promotions_later(xid, given)
        except RedisError:
            log.exception("promotions of an untold commit wait for a rebuild: %s", [code for code, _ in given])

    async def settle_promotions(self, *, session: AsyncSession) -> int:
        """Settle the promotions whose commit could not be told of (``_promote``), now that
        PostgreSQL can say: landed, they stand; not, their citizens go back to the head of
        their lines, and the lines are filled. Still unknown (a transaction still open), they
        wait for the next run, until their day has gone by (PostgreSQL may no longer know a
        transaction that old, and the seats sell to nobody then). As ``settle_bookings``: one
        commit's trouble holds up neither the others nor what the minute's job does after.
        The promotions settled."""
        settled = 0
        today = self.clock.today()
        for xid, given in (await self.capacity.promotions_to_settle()).items():
            try:
                if all(seat.day < today for _, seat in given):
                    settled += len(given) if await self.capacity.promotions_settled(xid) else 0
                    continue
                landed = await commit_outcome(session, xid, _promoted(code for code, _ in given), wait=0)
                # Taken off first, and only the run that took it off puts its citizens back in
                # line: twice would free each seat twice. An undo that fails may have run in
                # part (or landed after its timeout): the lines are left to fill all the same,
                # for a seat freed with people in line sells to no one until its line is filled.
                if landed is None or not await self.capacity.promotions_settled(xid):
                    continue
                settled += len(given)
                if not landed:
                    codes = [code for code, _ in given]
                    log.warning("the record says a promotion's commit did not land: back in line: %s", codes)
                    try:
                        await self.capacity.unpromote([(seat, code) for code, seat in reversed(given)])
                    finally:
                        await self.capacity.fill_later([seat for _, seat in given])
            except RECORD_OR_REDIS_AWAY:
                log.exception("promotions of an untold commit not settled this run: %s", [c for c, _ in given])
                with contextlib.suppress(*RECORD_AWAY):
                    await session.rollback()
        return settled

    async def settle_bookings(self, *, session: AsyncSession) -> int:
        """Free the seats of bookings whose commit's answer was lost and which the record did
        not have when asked (``_after_lost_commit``), once it can say the commit did not
        land; landed, they stand, and count against their citizens' limits again. Still
        unknown, they wait for the next run, until their day has gone by (its seats sell to
        nobody then). Each seat goes with the count it was taken in: one counted again from
        the record since is not freed (``Seat``). One commit's trouble holds up neither the
        others nor the lines' fill. The bookings settled."""
        settled = 0
        today = self.clock.today()
        for xid, given in await self.capacity.bookings_to_settle():
            codes = [code for code, _ in given]
            try:
                if all(seat.day < today for _, seat in given):
                    settled += len(await self.capacity.bookings_settled(codes))
                    continue
                written = select(Booking.id).where(Booking.tracking_code.in_(codes))
                landed = await commit_outcome(session, xid, written, wait=0)
                if landed is None:
                    continue
                if landed:
                    # Before they are taken off, so that a failure leaves them for the next run
                    # (holding again twice holds once).
                    await self._hold_landed(session, codes)
                # Taken off first, and only what this run took off is freed: a seat freed twice
                # would be sold twice. (A free that fails leaves it counted: the safe side.)
                taken = await self.capacity.bookings_settled(codes)
                settled += len(taken)
                if not landed:
                    seats = [seat for code, seat in given if code in taken]
                    log.warning("the record says %d lost commit(s) did not land: their seats are freed", len(seats))
                    await self.free_seats(session=session, seats=seats)
            except RECORD_OR_REDIS_AWAY:
                log.exception("bookings of a lost commit not settled this run: %s", codes)
                with contextlib.suppress(*RECORD_AWAY):
                    await session.rollback()
        return settled

    async def _hold_landed(self, session: AsyncSession, codes: list[str]) -> None:
        """Answered 503 while the record did not have them yet, these bookings freed their
        citizens' limits so that a retry could book (``_after_lost_commit``). Booked after
        all, they count against them again; then those that ended meanwhile (a cancel, say,
        whose own unhold ran before this hold) are let go again."""
        found = select(Booking.national_id, Booking.tracking_code, Booking.date, Booking.service_code).where(
            Booking.tracking_code.in_(codes), Booking.status.in_(ACTIVE_STATUSES)
        )
        rows = (await session.execute(found)).all()
        await session.rollback()  # no transaction left open while Redis answers; read afresh below
        for national_id, code, day, service_code in rows:
            await self.capacity.hold_again(
                national_id=national_id, tracking_code=code, day=day, service_code=service_code
            )
        ended = select(Booking.national_id, Booking.tracking_code).where(
            Booking.tracking_code.in_(codes), Booking.status.not_in(ACTIVE_STATUSES)
        )
        for national_id, code in (await session.execute(ended)).all():
            await self.capacity.unhold(national_id=national_id, tracking_code=code)
        await session.rollback()

    async def join_waitlist(
        self, *, session: AsyncSession, mobile: str, request: WaitlistJoin, channel: Channel = Channel.WEB
    ) -> BookingOut:
        """Queue for the day's next free seat at an office that is full that day."""
        allowance = self._allowance(mobile, channel)
        join = functools.partial(self._join_waitlist, session=session, mobile=mobile, request=request, channel=channel)
        try:
            if allowance.call is not None:  # on a trip of its own: a join is not on the hot path
                allowance.taken = True  # unless Redis says not: a trip whose answer is lost may have taken it
                retry_after = int(await self.limiter.auto.run_script(*allowance.call))
                allowance.answered = True
                if retry_after:
                    raise self._past_allowance(allowance, retry_after)
            try:
                return await join()
            except TrackingCodeTaken:  # nothing joined: once more, with a new code
                return await join()
        except Exception:
            await self._give_back_allowance(allowance)
            raise

    async def _join_waitlist(
        self, *, session: AsyncSession, mobile: str, request: WaitlistJoin, channel: Channel
    ) -> BookingOut:
        self.capacity.require_ready()
        national_id = normalize_national_id(request.national_id)
        day = parse_date(request.date)
        now = self.clock.now()
        today = now.date()
        self.capacity.check_horizon(day, today)
        office = await self.offices.bookable(
            office_code=request.office_code, service_code=request.service_code, session=session
        )
        not_before = first_bookable_time(now, day)
        tracking_code = new_tracking_code()
        asked = SeatRequest(
            office_code=office.code, day=day, pool=office.pool, time=None, not_before=not_before,
            tracking_code=tracking_code,
        )  # fmt: skip
        # Before the hold, which a recount would drop (writing every hold again from the record):
        # the mark of the last recount, None while one runs.
        recounted_as = await self.capacity.rebuilt_at()
        if recounted_as is None:
            raise CapacityRebuilding()
        try:
            await self._hold(national_id, today, day, office, tracking_code)
        except RedisError:
            # HOLD may have run with its answer lost (or may yet run): its hold would keep the
            # citizen from this service that day. Forgotten, as a booking's is.
            await self._forget_or_later(national_id, asked)
            raise
        # The row is committed before the citizen joins the line in Redis, so a seat freed
        # the next instant always finds the row it promotes.
        booking = Booking(
            tracking_code=tracking_code,
            office_id=office.id,
            service_code=office.service_code,
            national_id=national_id,
            mobile=mobile,
            date=day,
            slot_time="",
            pool=office.pool,
            status=BookingStatus.WAITLISTED,
            channel=channel,
            created_at=now,
        )
        xid = None  # not known if the record fails before it answers: nothing is written then
        try:
            xid = await hold_off_recounts(session)  # its id, for commit_outcome; a recount counts it in
            session.add(booking)
            await refuse_while_recounting(session, self.capacity.may_commit)
            if await self.capacity.rebuilt_at() != recounted_as:
                # A recount ran since the hold (a stalled request), from a record without this
                # row: the hold is gone with it. Joined now, the citizen would wait with no
                # hold, free to book that service that day once more. Tried again, it holds.
                await session.rollback()
                raise CapacityRebuilding()
            await session.commit()
        except (CapacityRebuilding, RedisError):  # nothing committed: the hold goes too
            await session.rollback()
            await self._unhold_or_later(national_id, asked)
            raise
        except IntegrityError as error:
            await session.rollback()
            await self._unhold_or_later(national_id, asked)
            if await self._by_tracking_code(session, tracking_code) is not None:  # not ours: not committed
                raise TrackingCodeTaken() from error
            raise AlreadyBookedThatDay() from error
        except RECORD_AWAY as error:
            # Its answer lost (a failover), the commit may have landed. The record is asked:
            # landed, only this request puts the citizen in line (a retry is refused "already
            # booked that day"), so it goes on as a join that was answered.
            written = select(Booking.id).where(Booking.tracking_code == tracking_code)
            landed = await commit_outcome(session, xid, written)
            if not landed:
                if landed is None:
                    # Landing later, the row waits in no line until the next rebuild.
                    log.error("a waitlist join's commit answer was lost, and the record cannot say: %s", tracking_code)
                await self._unhold_or_later(national_id, asked)
                raise ServiceUnavailable("The record is unavailable; you were not added to the waitlist.") from error
            log.warning("a waitlist join's commit answer was lost; the record has it: joined")
        try:
            position = None
            for _ in range(2):
                position = await self.capacity.join_waitlist(
                    office_code=office.code,
                    day=day,
                    pool=office.pool,
                    not_before=not_before,
                    tracking_code=tracking_code,
                )
                if position is not None:
                    break
                await self._materialise(session, office.code, day)
            if position is None:  # counted in, then gone again (a recount under way)
                raise ServiceUnavailable("This day cannot take a waitlist now; try again later.")
        except BaseException as error:
            booking_id = booking.id
            if not await self._take_back_join(session, booking_id, national_id, asked) or not isinstance(
                error, Exception
            ):
                raise
            # The join stands (a recount began, and puts the citizen in line from the record):
            # answered as joined, with its SMS. Answered with the error ("seats are free, book
            # instead"), the citizen's booking was then refused "already booked that day".
            booking = await session.get_one(Booking, booking_id)
            position = None
        view = self._view(booking, office.code, office.name_fa, office.service_name_fa)
        view = msgspec.structs.replace(view, waitlist_position=position)
        self.messenger.queue(
            session,
            to=mobile,
            body=f"در فهرست انتظار {office.name_fa} برای {view.when_fa} ثبت شدید"
            f"{'' if position is None else f'؛ نفر {to_persian_digits(str(position))}'}. "
            f"کد رهگیری: {tracking_code}\nکد ملی: {mask_national_id(national_id)}",
            kind="waitlist_joined",
        )
        try:
            await session.commit()
        except RECORD_AWAY:
            # The citizen is in line (row and place committed): a 503 now would have them
            # try again and be told "already booked". The answer tells them the same.
            await session.rollback()
            log.exception("joined the waitlist; its confirmation SMS was not recorded")
        return view

    async def waiting(self, *, session: AsyncSession, mobile: str, request: WaitlistJoin) -> str | None:
        """The tracking code of the line this join asks for, if the mobile is in it already
        for this national ID: the page's answer to a second tap on "join" (the first one
        joined; the second was refused, "already booked that day")."""
        try:
            national_id = normalize_national_id(request.national_id)
            day = parse_date(request.date)
            office_code = normalize_code(request.office_code, "office_code")
            service_code = normalize_code(request.service_code, "service_code")
        except DomainError:
            return None
        return await session.scalar(
            select(Booking.tracking_code)
            .join(Office, Office.id == Booking.office_id)
            .where(
                Office.code == office_code,
                Booking.date == day,
                Booking.mobile == mobile,
                Booking.national_id == national_id,
                Booking.service_code == service_code,  # refused for another service: not this line
                Booking.status == BookingStatus.WAITLISTED,
            )
        )

    async def _take_back_join(
        self, session: AsyncSession, booking_id: int, national_id: str, asked: SeatRequest
    ) -> bool:
        """Undo a waitlist join that failed. Its script may have run with the answer lost, and
        a seat freed since may have promoted the row: a booking the citizen has been told of,
        which stays. Only a row still waiting goes, with its hold and place in line (a seat
        given to a code with no row goes round again: ``_record_promotions``). True when the
        join stands, still waiting, for a recount that began meanwhile."""
        await session.rollback()
        await hold_off_recounts(session)
        removed = await session.scalar(
            delete(Booking)
            .where(Booking.id == booking_id, Booking.status == BookingStatus.WAITLISTED)
            .returning(Booking.id)
        )
        if removed is not None and not await self._may_commit_or_unknown():
            # A recount has begun, and may have read the row waiting: it writes the citizen
            # into the line, with a hold. Deleted now, the line would keep a code with no row
            # and the citizen a hold with no booking, refused that day. The join stands (a
            # retry is answered "already booked", and the page shows the line).
            await session.rollback()
            log.warning("a failed waitlist join met a recount; the join stands: %s", asked.tracking_code)
            return True
        await session.commit()
        if removed is None:
            return False
        try:
            await self.capacity.leave_waitlist(
                office_code=asked.office_code, day=asked.day, pool=asked.pool, tracking_code=asked.tracking_code
            )
        except RedisError:  # a seat given to the code goes round again (``_record_promotions``)
            log.warning("a failed waitlist join may stay in line, with no row", exc_info=True)
        await self._unhold_or_later(national_id, asked)
        return False

    async def _may_commit_or_unknown(self) -> bool:
        """``Capacity.may_commit``, or True when Redis cannot say: undone, a change whose Redis
        side cannot be undone either is left to the undo's own retries (``_unhold_or_later``)."""
        try:
            return await self.capacity.may_commit()
        except RedisError:
            return True

    def _view(self, booking: Booking, office_code: str, office_name_fa: str, service_name_fa: str) -> BookingOut:
        return booking_out(
            booking, office_code=office_code, office_name_fa=office_name_fa, service_name_fa=service_name_fa
        )


def when_fa(booking: Booking | NewBooking) -> str:
    """The booking's day and time as citizens read them (a place in line: its day)."""
    if not booking.slot_time:
        return jalali_date(booking.date)
    hours, minutes = booking.slot_time.split(":")
    return jalali_datetime(booking.date, dt.time(int(hours), int(minutes)))


def booking_out(
    booking: Booking | NewBooking, *, office_code: str, office_name_fa: str, service_name_fa: str
) -> BookingOut:
    return BookingOut(
        tracking_code=booking.tracking_code,
        status=booking.status.value,
        office_code=office_code,
        office_name_fa=office_name_fa,
        service_code=booking.service_code,
        service_name_fa=service_name_fa,
        date=booking.date.isoformat(),
        slot=booking.slot_time,
        when_fa=when_fa(booking),
        national_id=mask_national_id(booking.national_id),
        mobile=mask_mobile(booking.mobile),
        channel=booking.channel.value,
        created_at=booking.created_at.isoformat() if booking.created_at else "",
    )
