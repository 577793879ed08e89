"""Live capacity: seats reserved and released in Redis, rebuilt from the record when lost.

Redis answers "is there a seat" in one atomic step; SQL remembers who has it. Everything in
Redis can be recomputed from SQL (``rebuild``), so losing Redis loses no booking.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import itertools
import logging
import uuid
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from time import perf_counter
from time import time as unix_time
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import msgspec
from redis.asyncio import Redis, RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError, ResponseError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.booking.models import ACTIVE_STATUSES, SEAT_STATUSES, Booking, BookingStatus, Suspension
from app.capacity import keys
from app.capacity.errors import (
    AlreadyBookedThatDay,
    BookingSuspended,
    CapacityRebuilding,
    ClosuresChanging,
    DayFull,
    DayOver,
    DuplicateRequest,
    NoSuchSlot,
    OfficeBlocked,
    OfficeClosed,
    SeatsAvailable,
    SlotBegun,
    SlotFull,
    TooManyBookings,
)
from app.capacity.models import CapacityOverride, CapacityTemplate, Closure, CrowdCap
from app.capacity.plan import (
    Calendar,
    CapRule,
    Slot,
    decode_rules,
    decode_template,
    effective_cap,
    official_holidays,
)
from app.capacity.reading import NOTHING_COUNTED, Columns, CountedDay, DayReader, DaySums, day_fields
from app.capacity.scripts import Scripts, as_text
from app.clock import Clock
from app.db import Sessions
from app.errors import DomainError, InvalidInput
from app.locale import jalali_date
from app.observability import LUA_SECONDS
from app.offices.directory import reread_everywhere
from app.offices.models import City, Office, OfficeStatus
from app.redis import AutoPipeline, ScriptCall

log = logging.getLogger(__name__)

IDEMPOTENCY_TTL_SECONDS = 24 * 3600
ABANDONED_KEY_SECONDS = 30
"""An Idempotency-Key whose booking took its seat this long ago and is not in the record
belongs to a request that died on its way (its instance killed, its task cancelled): a retry
books instead of being told "in progress" for a day. One still alive that commits after all
meets the record's unique (mobile, key) and gives its seat back."""
NOT_COUNTED = "-"  # a day's count when Redis does not hold the day (see Capacity.counts)
FORGOTTEN = "!"  # marks a booking answered 503 whose scripts may yet run (Capacity.forget_unanswered)
HOLDS_PER_TRIP = 2000  # a recount's citizens' holds dropped, or written, to a trip to Redis
REPLAN_TRIES = 5  # a replan's writes, each time a closure's commit came while they ran


class Reserved(msgspec.Struct, frozen=True):
    time: str
    tracking_code: str
    replay: bool = False
    counted_in: str = ""  # the count of the record the day's counters came from (see Seat)


class ReservedButFailed(RedisError):
    """A booking's call to Redis failed while its RESERVE, answered by another node of a
    cluster, took a seat (``reserved``): the booking is not made, and the seat is its to give
    back. Left, it was held for nobody until the night's recount."""

    def __init__(self, error: RedisError, reserved: Reserved) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.reserved = reserved


class SeatRequest(msgspec.Struct, frozen=True):
    """What a booking asks of one office-day: a seat of ``pool`` at ``time``, or the earliest
    free one from ``not_before`` on (None: any), under ``tracking_code``; ``idempotency`` is
    the (owner, Idempotency-Key) of a request that carried one.

    ``ahead_of_waitlist``: a confirmed booking the office moves within its own day (a new
    plan dropped its slot). It held a seat here before anyone in the day's line, so seats
    a new plan adds are its first, and the line gets what is left. Anywhere else it is a
    new arrival and waits its turn like anyone.

    ``giving_back``: seats of the pool that the moves of this day will give back once
    recorded (a moved booking's own, and those of its batch moved before it). Counted until
    then, they would leave a capped day no room for the moves themselves."""

    office_code: str
    day: dt.date
    pool: str
    time: str | None
    not_before: str | None
    tracking_code: str
    idempotency: tuple[str, str] | None = None
    ahead_of_waitlist: bool = False
    giving_back: int = 0


class Seat(msgspec.Struct, frozen=True):
    """One seat of a slot at an office on a day; ``time`` empty: no slot in particular.

    ``counted_in``, for a seat given back: the count of the record (the day's ``_count``) the
    seat is known to be counted in. A seat reserved and never recorded is in the count that
    RESERVE answered with (``Reserved.counted_in``); one whose booking the record just let go of
    (a cancel, a move) is in the count read before that commit. If the day has been counted
    again since, that count went by the record, and freeing the seat would free somebody
    else's: RELEASE then frees nothing. Empty: free it whatever the count."""

    office_code: str
    day: dt.date
    pool: str
    time: str
    counted_in: str = ""


class Promotion(msgspec.Struct, frozen=True):
    """A waitlisted citizen who was just given a seat, in the day's count ``counted_in``."""

    tracking_code: str
    time: str
    counted_in: str


class Overflow(msgspec.Struct, frozen=True):
    """A slot whose bookings a new plan cannot hold."""

    office_code: str
    day: dt.date
    pool: str
    time: str
    seats: int  # under the new plan
    booked: int


class SlotView(msgspec.Struct, frozen=True):
    pool: str
    time: str
    seats: int
    used: int
    free: int  # bookable now: the slot's own room, and the day's under a cap (day_room)


def day_room(seats: int, used: int, cap: int) -> int:
    """Bookings a day may still take across all its slots of one pool: a cap (a crowd cap, a
    restriction) limits the day's total, not each slot, so an office with one seat a slot
    keeps half its day under a 50% cap rather than none of it (the scripts' day_room, which
    sets no bound without a cap: here the day's seats less its used, for the sums of a day
    that have no slot's own). Without a cap each slot bounds only itself, so those sums must
    count an over-full slot as full: DaySums does, and _slot_views, the office load and the
    relocator's _DayRoom go slot by slot then (``DayView.rooms`` is for a capped day)."""
    return seats * cap // 100 - used if cap < 100 else seats - used


class DayView(msgspec.Struct, frozen=True):
    status: str
    cap_percent: int
    slots: list[SlotView]

    def rooms(self) -> dict[str, int]:
        """Each pool's room in the whole day under the day's cap (``day_room`` of its slots'
        seats and used), as RESERVE bounds a booking: a pool full before a restriction takes
        none of another's."""
        sums: dict[str, tuple[int, int]] = {}
        for slot in self.slots:
            seats, used = sums.get(slot.pool, (0, 0))
            sums[slot.pool] = (seats + slot.seats, used + slot.used)
        return {pool: day_room(seats, used, self.cap_percent) for pool, (seats, used) in sums.items()}


class OfficePlan(msgspec.Struct, frozen=True):
    """What materialising an office needs from the record."""

    office_id: int
    code: str
    province_id: int
    status: str
    cap_percent: int
    template: str

    def cap(self, day: dt.date, caps: list[CapRule]) -> int:
        return effective_cap(
            status=self.status, office_cap_percent=self.cap_percent, province_id=self.province_id, day=day, caps=caps
        )


def first_bookable_time(now: dt.datetime, day: dt.date) -> str | None:
    """A slot that starts this minute has started: only later ones are bookable today, and
    none of a day gone (its counters live on until the next day ends: a fill just after
    midnight had given yesterday's line yesterday's empty slots, told by SMS)."""
    if day < now.date():
        return "24:00"
    if day > now.date():
        return None
    later = now + dt.timedelta(minutes=1)
    # At 23:59 the next minute is tomorrow's 00:00, which would let every slot of today in.
    return later.strftime("%H:%M") if later.date() == day else "24:00"


PLAN_AHEAD_DAYS = 366
"""How far ahead a day's plan may be set: an office's own, or a regulator's closure (a decree
weeks away), recorded and written into the counters as the day enters the horizon."""


def _refuse_outside(day: dt.date, first: dt.date, last: dt.date, what_en: str, what_fa: str) -> None:
    """InvalidInput on ``date`` naming the range, unless ``first <= day <= last``."""
    if not first <= day <= last:
        raise InvalidInput(
            "date",
            f"{what_en} from {first.isoformat()} to {last.isoformat()}.",
            detail_fa=what_fa.format(f"از {jalali_date(first)} تا {jalali_date(last)}"),
            first=first.isoformat(),
            last=last.isoformat(),
        )


def day_expiry(day: dt.date, tz: ZoneInfo) -> int:
    """A day's counters live until the end of the following day, then Redis drops them."""
    end = dt.datetime.combine(day + dt.timedelta(days=2), dt.time(), tzinfo=tz)
    return int(end.timestamp())


class Capacity:
    def __init__(
        self,
        redis: Redis,
        *,
        clock: Clock,
        horizon_days: int,
        official_holidays: bool = True,
        read_cache_seconds: float = 0.0,
    ) -> None:
        self.official_holidays = official_holidays
        # False while Redis is down or being rebuilt (see app.capacity.watch): bookings wait.
        self.ready = True
        self.watched = False  # True once app.capacity.watch keeps ``ready`` fresh (web instances)
        self.paused_by = ""  # why the watch last paused bookings, when Redis refused it ("" else)
        self._probes: list[str] = []  # a key in a slot of each master of a cluster (probe_writes)
        # The count Redis was last seen built in (its rebuild marker), by the watch's look or a
        # commit's: a booking notes it before taking its seat, and commits only in the same
        # (app.booking.writer). None: not seen built.
        self.mark: str | None = None
        self.redis = redis
        self.auto = AutoPipeline(redis)  # trips to Redis shared with the other requests'
        self.scripts = Scripts(redis, self.auto)
        # What this instance writes below it forgets here, so its own readers see it at once.
        self.reads = DayReader(self.auto, ttl=read_cache_seconds)
        self.clock = clock
        self.horizon_days = horizon_days

    # --- the hot path ---

    async def reserve(self, seat: SeatRequest) -> Reserved | None:
        """Take one seat. None means the day is not in Redis yet: materialise it and call again."""
        started = perf_counter()
        with self.reads.changing([(seat.office_code, seat.day)]):
            reply = await self.scripts.reserve(*_reserve_call(seat))
        LUA_SECONDS.labels("reserve").observe(perf_counter() - started)
        return _reserved(reply)

    async def hold_and_reserve(
        self,
        *,
        national_id: str,
        today: dt.date,
        service_code: str,
        limit: int,
        seat: SeatRequest,
        walk_in: bool = False,
        along: ScriptCall | None = None,
    ) -> tuple[DomainError | None, bool, Reserved | DomainError | None, Any]:
        """``hold`` and ``reserve`` in one round trip (a booking's two Redis steps; they touch
        keys of two hash tags, so they cannot be one script), with ``along``, a script call of
        the caller's, run first. Each answer comes back as it is, an error included, and the
        caller undoes whichever step another's refusal leaves alone: the hold's error, whether
        the same request was held before (HOLD's AGAIN), the seat (or None: the day is not in
        Redis), and ``along``'s reply (None without it)."""
        reserve_keys, reserve_args = _reserve_call(seat)
        # The tag of a request with a key: its Redis key hashed (one office, mobile and key).
        tag = _hold_tag(reserve_keys[1]) if seat.idempotency else ""
        calls: list[ScriptCall] = [] if along is None else [along]
        calls += [
            (
                self.scripts.hold,
                *self._hold_call(national_id, today, seat.day, service_code, seat.tracking_code, limit, walk_in, tag),
            ),
            (self.scripts.reserve, reserve_keys, reserve_args),
        ]
        started = perf_counter()
        with self.reads.changing([(seat.office_code, seat.day)]):
            replies = await self.auto.run_scripts(calls, raise_errors=False)
        LUA_SECONDS.labels("hold+reserve").observe(perf_counter() - started)
        along_reply, hold_reply, reserve_reply = None if along is None else replies[0], replies[-2], replies[-1]
        failed = next((reply for reply in replies if isinstance(reply, BaseException)), None)
        if failed is not None:
            # On a cluster the calls reach different nodes: RESERVE may have taken a seat while
            # another call failed. Raised with it, for the caller to give it back.
            if isinstance(failed, RedisError) and not isinstance(reserve_reply, BaseException):
                with contextlib.suppress(DomainError):  # refused: no seat taken
                    reserved_anyway = _reserved(reserve_reply)
                    if reserved_anyway is not None and not reserved_anyway.replay:
                        raise ReservedButFailed(failed, reserved_anyway) from failed
            raise failed
        try:
            reserved: Reserved | DomainError | None = _reserved(reserve_reply)
        except DomainError as error:
            reserved = error
        return _hold_error(hold_reply, limit), as_text(hold_reply[0]) == "AGAIN", reserved, along_reply

    async def pool_seats(self, pools: Collection[tuple[str, dt.date, str]]) -> dict[tuple[str, dt.date, str], int]:
        """The seats of each (office, day, pool) in its counters, before any cap; a day Redis
        does not hold is left out. One trip."""
        pools = list(pools)
        days = await self.auto.execute_many([("HGETALL", keys.office_day(code, day)) for code, day, _ in pools])
        seats: dict[tuple[str, dt.date, str], int] = {}
        for (code, day, pool), raw in zip(pools, days, strict=True):
            if fields := day_fields(raw):
                seats[(code, day, pool)] = DaySums(fields).of(pool).planned
        return seats

    async def counts(self, days: Collection[tuple[str, dt.date]]) -> dict[tuple[str, dt.date], str]:
        """The count of the record each (office, day)'s counters are in now: read before a
        commit that lets go of seats, it is what their release hands RELEASE (``Seat``). A
        day Redis does not hold gets an id no count has: a count that writes it from the
        record after that commit leaves the seat out, and nothing may free it. (Every day
        has a ``_status``; one written before ``_count`` existed has none: "", as RELEASE
        reads it.)"""
        days = list(days)
        replies = await self.auto.execute_many([("HMGET", keys.office_day(*day), "_status", "_count") for day in days])
        return {
            day: NOT_COUNTED if status is None else as_text(count or "")
            for day, (status, count) in zip(days, replies, strict=True)
        }

    async def release(
        self,
        *,
        office_code: str,
        day: dt.date,
        pool: str,
        time: str,
        not_before: str | None = None,
        idempotency: tuple[str, str] | None = None,
        counted_in: str = "",
    ) -> list[Promotion]:
        """Free one seat (``time`` empty: none) and hand seats with room to the day's waitlist.
        ``counted_in``: see ``Seat``.

        Returns who was promoted: the caller records each in SQL, or frees the seat again.
        """
        seat = Seat(office_code, day, pool, time, counted_in)
        with self.reads.changing([(office_code, day)]):
            return _promotions(await self.scripts.release(*_release_call(seat, not_before, idempotency)))

    async def release_many(self, seats: Sequence[Seat], *, now: dt.datetime) -> list[list[Promotion] | BaseException]:
        """``release`` for many seats on one trip to Redis: for each, who was promoted, or the
        error its call met (the others ran: their promotions must still be recorded). A
        clerk's cut that moves thirty people waits for one trip, not thirty, behind a rush."""
        calls = [_release_call(seat, first_bookable_time(now, seat.day), None) for seat in seats]
        with self.reads.changing([(seat.office_code, seat.day) for seat in seats]):
            replies = await self.scripts.run_many(self.scripts.release, calls, raise_errors=False)
        return [reply if isinstance(reply, BaseException) else _promotions(reply) for reply in replies]

    async def unpromote(self, given: Sequence[tuple[Seat, str]]) -> None:
        """Undo promotions that could not be recorded (capacity paused for a recount): each
        seat (``counted_in`` as RELEASE gave it) freed, and its citizen's tracking code ("":
        none) put back at the head of the line; the last of ``given`` ends up first."""
        calls = [
            (
                [keys.office_day(seat.office_code, seat.day), keys.waitlist(seat.office_code, seat.day, seat.pool)],
                [seat.pool, seat.time, seat.counted_in, tracking_code],
            )
            for seat, tracking_code in given
        ]
        # On a cluster, in rounds, the n-th put back of each line in the n-th: a round's calls
        # run at once, and two of one line's could land in either order. (A single Redis's
        # pipeline keeps the order: one trip.)
        rounds: Iterable[Sequence[tuple[list[str], list[Any]]]] = [calls]
        if isinstance(self.redis, RedisCluster):
            by_line: dict[str, list[tuple[list[str], list[Any]]]] = {}
            for call in calls:
                by_line.setdefault(call[0][1], []).append(call)
            rounds = [[c for c in round_ if c is not None] for round_ in itertools.zip_longest(*by_line.values())]
        with self.reads.changing([(seat.office_code, seat.day) for seat, _ in given]):
            for calls_at_once in rounds:
                await self.scripts.run_many(self.scripts.unpromote, calls_at_once)

    async def apply_later(self, *fields: str, noted_in: str, tag: str = "") -> Noted:
        """Note that what ``fields`` name is about to change in the record, and must reach
        Redis (an office's plan in ``keys.PLANS_TO_APPLY``, a crowd cap in
        ``keys.CAPS_TO_APPLY``, a closure in ``keys.CLOSURES_TO_APPLY``, a line to fill in
        ``keys.WAITLISTS_TO_FILL``): the minute's jobs see through what a request could not.
        The change's id (the first field's), for ``applied``; it ends with ``tag``, for
        whoever applies it. A change noted before for a field and not yet applied is folded in
        (``scripts.NOTE_CHANGE``: its tag kept if this one has none), and ``earlier`` says so:
        forgotten with this one's note, it must be applied with it."""
        # Cut, not rounded, to the millisecond: rounded up, a note was not yet due to a job
        # that takes every note at once (``older_than=0``).
        change = f"{int(dt.datetime.now(dt.UTC).timestamp() * 1000) / 1000:.3f}|{uuid.uuid4().hex}|{tag}"
        if not fields:
            return Noted(change, earlier=False)
        first, folded = await self.scripts.note_change(keys=[noted_in], args=[change, *fields])
        return Noted(as_text(first), earlier=bool(int(folded)))

    async def noted(self, field: str, *, noted_in: str) -> str | None:
        """The change noted for ``field`` and not yet applied (``apply_later``), if any."""
        change = await self.redis.hget(noted_in, field)
        return None if change is None else as_text(change)

    async def applied(self, field: str, change: str, *, noted_in: str) -> None:
        """The change is in Redis and its moves done: forget it, unless a later one came since."""
        await self.scripts.forget_if(keys=[noted_in], args=[field, change])

    async def to_apply(self, *, older_than: float, noted_in: str, ids: bool = False) -> dict[str, str]:
        """The changes noted more than ``older_than`` seconds ago (younger ones are their
        request's to apply): field -> change id. With ``ids``, the fields are the record's
        row ids (a cap's, a closure's)."""
        noted = await self.redis.hgetall(noted_in)
        due = dt.datetime.now(dt.UTC).timestamp() - older_than
        found = {}
        for raw_field, raw_change in noted.items():
            field, change = as_text(raw_field), as_text(raw_change)
            try:
                noted_at = float(change.partition("|")[0])
                if ids:
                    int(field)
            except ValueError:  # not ours (a hand's HSET): dropped, for it would stop every later run
                log.error("a change to apply that is not one, in %s: %r = %r", noted_in, field, change)
                await self.applied(field, change, noted_in=noted_in)  # not a good one noted since
                continue
            if noted_at <= due:
                found[field] = change
        return found

    async def fill_later(self, seats: Collection[Seat]) -> None:
        """Leave the lines of these seats' office-day and pool to the minute's job to fill
        (``keys.WAITLISTS_TO_FILL``)."""
        if seats:
            lines = {keys.waitlist(seat.office_code, seat.day, seat.pool) for seat in seats}
            await self.apply_later(*lines, noted_in=keys.WAITLISTS_TO_FILL)

    async def left_to_fill(self) -> dict[Seat, str]:
        """The lines left to fill, each as the seat to give them (any time: ``Seat``) with its
        note's change id for ``filled``. They stay noted until then: taken off as a run began,
        the lines of a run killed half-way waited for the next cancel there, or a recount."""
        if before := await self.redis.srandmember(keys.WAITLISTS_TO_FILL_BEFORE, 10_000):
            await self.apply_later(*(as_text(line) for line in before), noted_in=keys.WAITLISTS_TO_FILL)
            await self.redis.srem(keys.WAITLISTS_TO_FILL_BEFORE, *before)  # once noted, not before
        seats = {}
        for line, change in (await self.to_apply(older_than=0, noted_in=keys.WAITLISTS_TO_FILL)).items():
            try:
                seats[Seat(*keys.parse_waitlist(line), "")] = change
            except (ValueError, IndexError):  # not ours: dropped, for it would stop every later run
                log.error("a waitlist to fill that is not one: %r", line)
                await self.applied(line, change, noted_in=keys.WAITLISTS_TO_FILL)
        return seats

    async def filled(self, seats: dict[Seat, str]) -> None:
        """Forget the lines ``left_to_fill`` gave, now filled, but not one noted again since."""
        await asyncio.gather(
            *(
                self.applied(
                    keys.waitlist(seat.office_code, seat.day, seat.pool), change, noted_in=keys.WAITLISTS_TO_FILL
                )
                for seat, change in seats.items()
            )
        )

    async def settle_promotions_later(self, xid: int, given: Sequence[tuple[str, Seat]]) -> None:
        """Leave a promotion whose commit could not be told of to the minute's job
        (``keys.PROMOTIONS_TO_SETTLE``): its transaction's id, and each code with its seat."""
        await self.redis.hset(keys.PROMOTIONS_TO_SETTLE, str(xid), msgspec.json.encode(list(given)))

    async def promotions_to_settle(self) -> dict[int, list[tuple[str, Seat]]]:
        found = {}
        for xid, given in (await self.redis.hgetall(keys.PROMOTIONS_TO_SETTLE)).items():
            try:
                found[int(as_text(xid))] = msgspec.json.decode(given, type=list[tuple[str, Seat]])
            except (ValueError, msgspec.DecodeError):  # not ours: dropped, for it would stop every later run
                log.error("a promotion to settle that is not one: %r", xid)
                await self.redis.hdel(keys.PROMOTIONS_TO_SETTLE, xid)
        return found

    async def promotions_settled(self, xid: int) -> bool:
        """Take a promotion off those to settle; whether this call took it (not another's run
        of the job)."""
        return bool(await self.redis.hdel(keys.PROMOTIONS_TO_SETTLE, str(xid)))

    async def settle_booking_later(self, tracking_code: str, xid: int | None, seat: Seat) -> None:
        """Leave the seat of a booking whose commit could not be placed to the minute's job
        (``keys.BOOKINGS_TO_SETTLE``), with its transaction's id."""
        await self.redis.hset(keys.BOOKINGS_TO_SETTLE, tracking_code, msgspec.json.encode((xid, seat)))

    async def bookings_to_settle(self) -> list[tuple[int | None, list[tuple[str, Seat]]]]:
        """The bookings left to settle, by the transaction they were committed in (each of its
        own on SQLite, which gives none): (xid, [(tracking code, seat), ...])."""
        by_xid: dict[int, list[tuple[str, Seat]]] = {}
        alone: list[tuple[int | None, list[tuple[str, Seat]]]] = []
        for code, value in (await self.redis.hgetall(keys.BOOKINGS_TO_SETTLE)).items():
            try:
                xid, seat = msgspec.json.decode(value, type=tuple[int | None, Seat])
            except msgspec.DecodeError:  # not ours: dropped, for it would stop every later run
                log.error("a booking to settle that is not one: %r", code)
                await self.redis.hdel(keys.BOOKINGS_TO_SETTLE, code)
                continue
            if xid is None:
                alone.append((None, [(as_text(code), seat)]))
            else:
                by_xid.setdefault(xid, []).append((as_text(code), seat))
        return [*by_xid.items(), *alone]

    async def bookings_settled(self, tracking_codes: Sequence[str]) -> list[str]:
        """Take these off the bookings to settle; those this call took off (not another's
        run of the job): theirs alone to free, so that no seat is freed twice."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for code in tracking_codes:
                pipe.hdel(keys.BOOKINGS_TO_SETTLE, code)
            removed = await pipe.execute()
        return [code for code, gone in zip(tracking_codes, removed, strict=True) if gone]

    async def place_in_line(self, *, office_code: str, day: dt.date, pool: str, tracking_code: str) -> int | None:
        """The booking's place in its day's line (1: next), or None when it is not in it."""
        index = await self.redis.lpos(keys.waitlist(office_code, day, pool), tracking_code)
        return index + 1 if isinstance(index, int) else None  # one match asked for: an int or None

    async def join_waitlist(
        self, *, office_code: str, day: dt.date, pool: str, not_before: str | None, tracking_code: str
    ) -> int | None:
        """Queue for the day's next free seat: the place in line, or None when the day is not in Redis."""
        outcome, position = await self.scripts.join_waitlist(
            keys=[keys.office_day(office_code, day), keys.waitlist(office_code, day, pool)],
            args=[pool, not_before or "", tracking_code],
        )
        outcome = as_text(outcome)
        if outcome == "OK":
            return int(position)
        if outcome == "NO_DAY":
            return None
        raise _WAITLIST_ERRORS[outcome]()

    async def leave_waitlist(self, *, office_code: str, day: dt.date, pool: str, tracking_code: str) -> None:
        await self.redis.lrem(keys.waitlist(office_code, day, pool), 0, tracking_code)

    async def waitlists(
        self, *, office_codes: set[str], days: list[dt.date], pools: dict[str, set[str]]
    ) -> list[tuple[str, dt.date, str]]:
        """The (office, day, pool) waitlists that have anyone in line, of these offices and days
        (``pools``: each office's pools there may be), asked for by name in one trip."""
        lines = [(code, day, pool) for code in sorted(office_codes) for day in days for pool in sorted(pools[code])]
        if not lines:
            return []
        found = await self.auto.execute_many([("EXISTS", keys.waitlist(*line)) for line in lines])
        return [line for line, exists in zip(lines, found, strict=True) if exists]

    async def idempotency_seen(self, *, office_code: str, owner: str, key: str) -> bool:
        """Whether a booking with this Idempotency-Key took a seat here and may still be on its
        way to the record: not forgotten after a lost answer (marked '!': see
        ``forget_unanswered``), nor taken ABANDONED_KEY_SECONDS ago or more."""
        name = keys.idempotency(office_code, owner, key)
        seen, left = await self.auto.execute_many([("GET", name), ("TTL", name)])
        return seen is not None and not as_text(seen).startswith(FORGOTTEN) and not _abandoned(int(left))

    async def forget_abandoned(self, seat: SeatRequest, tracking_code: str) -> bool:
        """Let go of the Idempotency-Key of ``seat`` if it names a booking (``tracking_code``,
        which the caller found the record lacks) that took its seat ABANDONED_KEY_SECONDS ago
        or more: its request died, and the retry may book. Its seat stays counted until the
        night's recount, as any seat a dead request took. Whether it was let go (not when a
        retry with the key has booked meanwhile: FORGET_KEY)."""
        assert seat.idempotency is not None, "a request with no key has no mark to let go of"
        name = keys.idempotency(seat.office_code, *seat.idempotency)
        if not _abandoned(await self.redis.ttl(name)):
            return False
        return bool(await self.scripts.forget_key(keys=[name], args=[tracking_code, IDEMPOTENCY_TTL_SECONDS]))

    async def hold(
        self, *, national_id: str, today: dt.date, day: dt.date, service_code: str, tracking_code: str, limit: int
    ) -> None:
        """Count a booking against the citizen's limits, which span every office."""
        started = perf_counter()
        reply = await self.scripts.hold(*self._hold_call(national_id, today, day, service_code, tracking_code, limit))
        LUA_SECONDS.labels("hold").observe(perf_counter() - started)
        if error := _hold_error(reply, limit):
            raise error

    def _hold_call(
        self,
        national_id: str,
        today: dt.date,
        day: dt.date,
        service_code: str,
        tracking_code: str,
        limit: int,
        walk_in: bool = False,
        tag: str = "",
    ) -> tuple[list[str], list[str | int]]:
        keys_ = [keys.citizen_holds(national_id)]
        args: list[str | int] = [
            today.isoformat(), day.isoformat(), service_code, tracking_code, limit, self._holds_ttl(),
            "walk_in" if walk_in else "", tag,
        ]  # fmt: skip
        return keys_, args

    async def suspend(self, *, national_id: str, until: dt.date, today: dt.date) -> None:
        """Refuse new bookings of this national ID before ``until`` (repeated no-shows)."""
        seconds = ((until - today).days + 1) * 86400
        await self.scripts.suspend(keys=[keys.citizen_holds(national_id)], args=[until.isoformat(), seconds])

    async def lift_suspension(self, *, national_id: str) -> None:
        """Let this national ID book again (its suspension deleted from the record)."""
        await self.redis.hdel(keys.citizen_holds(national_id), "_suspended")

    async def unhold(self, *, national_id: str, tracking_code: str) -> None:
        await self.redis.hdel(keys.citizen_holds(national_id), tracking_code)

    async def hold_again(self, *, national_id: str, tracking_code: str, day: dt.date, service_code: str) -> None:
        """Count a booking the record has against its citizen's limits again, whatever they
        say: one whose limit ``forget_unanswered`` freed, and which landed after all."""
        await self.scripts.hold_again(
            keys=[keys.citizen_holds(national_id)],
            args=[tracking_code, _held_as(day, service_code), self._holds_ttl()],
        )

    async def forget_unanswered(self, *, national_id: str, seat: SeatRequest) -> bool:
        """After a booking whose outcome is unknown (Redis's answer to ``hold_and_reserve``
        was lost, or the record's to the commit, and the record has no such booking): free
        the citizen's limit and the request's Idempotency-Key, so that the same request,
        retried, books. Both are harmless to free if never taken; a booking that lands after
        all is caught by its unique Idempotency-Key or the one-a-day rule. The seat stays
        counted: one whose slot Redis named (the commit's answer lost) is left to the minute's
        job (``settle_booking_later``); one Redis never told of, whose slot is not known,
        until a rebuild. Best effort:
        Redis may be gone, and the caller's 503 is what matters then.

        Redis may also run the request's scripts after this (stalled, it answered nothing
        in time, and runs what waits in its sockets in no set order): both are freed by
        marking them forgotten ('!' and the tracking code); deleted, they would come back. A
        retry that has booked meanwhile keeps the key's mark (FORGET_KEY).
        A late HOLD of this request that finds its mark holds nothing, and a late RESERVE
        of a request with an Idempotency-Key takes no seat (without one, there is no key
        to mark: its seat stays counted, as a seat taken before the timeout does).

        Whether every mark landed (each may be sent again: marking twice marks once)."""
        marks: list[Awaitable[Any]] = [
            self.scripts.forget(
                keys=[keys.citizen_holds(national_id)],
                args=[seat.tracking_code, seat.day.isoformat(), self._holds_ttl()],
            )
        ]
        if seat.idempotency:
            key = keys.idempotency(seat.office_code, *seat.idempotency)
            marks.append(self.scripts.forget_key(keys=[key], args=[seat.tracking_code, IDEMPOTENCY_TTL_SECONDS]))
        # Sent together, neither waiting on the other's answer: the Redis that stalled the
        # booking may well time this out too, and each mark must still reach it.
        landed = True
        for outcome in await asyncio.gather(*marks, return_exceptions=True):
            if isinstance(outcome, RedisError):
                log.warning("could not free the limit of a booking whose answer from Redis was lost", exc_info=outcome)
                landed = False
            elif isinstance(outcome, BaseException):
                raise outcome
        return landed

    def _holds_ttl(self) -> int:
        return (self.horizon_days + 1) * 86400

    # --- reading ---

    async def day_view(self, *, office_code: str, day: dt.date) -> DayView | None:
        """The office-day as readers see it (up to ``read_cache_seconds`` old; see app.capacity.reading)."""
        counted = await self.reads.day(office_code, day)
        return None if counted is None else _view(counted)

    async def counted_for_reading(self, *, sessions: Sessions, office_code: str, day: dt.date) -> CountedDay:
        """The office-day's counters as readers see them, materialised first if Redis does
        not hold the day yet (nothing counted if it still does not: a race with a rebuild)."""
        counted = await self.reads.day(office_code, day)
        if counted is None:
            async with sessions() as session:
                await self.materialise_day(session=session, office_code=office_code, day=day)
            counted = await self.reads.day(office_code, day)
        return NOTHING_COUNTED if counted is None else counted

    # --- materialising from the record ---

    def horizon(self, today: dt.date) -> list[dt.date]:
        return [today + dt.timedelta(days=i) for i in range(self.horizon_days)]

    def in_horizon(self, day: dt.date, today: dt.date) -> bool:
        """Whether the day is today or one after it within the horizon (the days that take bookings)."""
        return today <= day <= today + dt.timedelta(days=self.horizon_days - 1)

    def check_horizon(self, day: dt.date, today: dt.date) -> None:
        """Only today and the days after it within the horizon take bookings."""
        last = today + dt.timedelta(days=self.horizon_days - 1)
        _refuse_outside(day, today, last, "Bookings are open", "نوبت فقط {} داده می‌شود.")

    def check_plannable(self, day: dt.date, today: dt.date) -> None:
        """A day a plan may be set for (an office's own, a regulator's closure): today to
        PLAN_AHEAD_DAYS ahead, beyond the horizon too."""
        last = today + dt.timedelta(days=PLAN_AHEAD_DAYS)
        _refuse_outside(day, today, last, "A day may be planned", "برنامهٔ یک روز (ویژه یا تعطیلی) فقط {} ثبت می‌شود.")

    async def bookable_slots(
        self, *, sessions: Sessions, office_code: str, pool: str, day: dt.date, now: dt.datetime
    ) -> tuple[str, list[SlotView]]:
        """The office-day's status, and its slots of one pool that can still be booked. Only
        that pool's slots from ``not_before`` on are made, not the whole day's sorted and then
        filtered: the same on a demo day, several times less on a day of several desks."""
        counted = await self.counted_for_reading(sessions=sessions, office_code=office_code, day=day)
        columns = counted.pools.get(pool)
        if columns is None:
            return counted.status, []
        if counted.cap < 100 and day_room(sum(columns[1]), 0, counted.cap) <= 0:
            # A cap that lets the day sell nothing (a 0% restriction, a share that rounds to no
            # seat): no slot, as a day off. Shown full, the page offered a line the join refused.
            return counted.status, []
        first = bisect_left(columns[0], first_bookable_time(now, day) or "")
        # A blocked office sells nothing (RESERVE refuses it): its slots shown with no seat
        # free, not the seats an API client would try and be refused.
        cap = 0 if counted.status == OfficeStatus.BLOCKED else counted.cap
        return counted.status, [slot for slot in _slot_views(pool, columns, cap, first) if slot.seats > 0]

    def _day_args(
        self,
        plan: OfficePlan,
        day: dt.date,
        used: Used,
        caps: list[CapRule],
        calendar: Calendar,
        count_id: str,
    ) -> list[str | int]:
        cap = plan.cap(day, caps)
        args: list[str | int] = [
            day_expiry(day, self.clock.tz), "_status", plan.status, "_cap", cap, "_count", count_id,
        ]  # fmt: skip
        taken = used.on(plan.office_id, day, capped=cap < 100)
        slots: Sequence[Slot] = calendar.slots(
            office_id=plan.office_id, province_id=plan.province_id, template=decode_template(plan.template), day=day
        )
        for slot in slots:
            args += [keys.seats_field(slot.pool, slot.time), slot.seats]
            count = taken.get((slot.pool, slot.time), 0)
            if count:
                args += [keys.used_field(slot.pool, slot.time), count]
        # A booking whose slot the template no longer has still holds its seat.
        planned = {(s.pool, s.time) for s in slots}
        for (pool, time), count in taken.items():
            if (pool, time) not in planned:
                args += [keys.seats_field(pool, time), 0, keys.used_field(pool, time), count]
        return args

    async def materialise_day(self, *, session: AsyncSession, office_code: str, day: dt.date) -> bool:
        """Write one office-day into Redis if it is absent (after a day rolls into the horizon
        or a wipe). False when the office has no plan at all: nothing to write."""
        meta_seen = await self.redis.get(keys.META_CHANGED)
        plans = await load_plans(session, codes=[office_code])
        if not plans:
            return False
        plan = plans[0]
        used = await count_used(session, office_ids=[plan.office_id], days=[day], now=self.clock.now())
        caps = await load_caps(session, first=day, last=day)
        calendar = await self.calendar(session, first=day, last=day, office_ids=[plan.office_id])
        # Not told: it writes only a day Redis lacks, and nobody keeps a day Redis lacks.
        self.reads.forget(plan.code, day)
        await self.scripts.materialise(
            keys=[keys.office_day(plan.code, day)],
            args=[
                "create",
                *self._day_args(plan, day, used, caps, calendar, _new_count()),
            ],
        )
        await self._meta_since(meta_seen, session=session, codes=[plan.code], days=[day])
        return True

    async def calendar(
        self,
        session: AsyncSession,
        *,
        first: dt.date,
        last: dt.date,
        office_ids: list[int] | None = None,
        without_closure: int | None = None,
    ) -> Calendar:
        """Overrides, closures and official holidays between two dates, as the record has them
        (without the closure about to be removed, if given)."""
        query = select(CapacityOverride.office_id, CapacityOverride.date, CapacityOverride.rules).where(
            CapacityOverride.date >= first, CapacityOverride.date <= last
        )
        if office_ids is not None:
            query = query.where(CapacityOverride.office_id.in_(office_ids))
        overrides = {(oid, day): decode_rules(rules) for oid, day, rules in await session.execute(query)}
        closures_query = select(Closure.province_id, Closure.date).where(Closure.date >= first, Closure.date <= last)
        if without_closure is not None:
            closures_query = closures_query.where(Closure.id != without_closure)
        closures = {(province_id, day) for province_id, day in await session.execute(closures_query)}
        return Calendar(overrides=overrides, closures=closures, holidays=self.holidays(first, last))

    def holidays(self, first: dt.date, last: dt.date) -> set[dt.date]:
        """The official holidays between two dates, as this release's calendar and the
        setting (NOBAT_OFFICIAL_HOLIDAYS) have them."""
        return official_holidays(first, last) if self.official_holidays else set()

    async def holidays_changed(self, today: dt.date) -> HolidaysChanged:
        """The days of the horizon whose being an official holiday differs from what the
        counters were last made to follow (``holidays_followed``): every holiday of the
        horizon when that is unknown (a first run, Redis emptied). A day new to the horizon
        since was written from the calendar as it entered: not a change.

        Another calendar than this process's (an older release's, the setting not turned
        there yet) looked within CALENDAR_SETTLE seconds, and the note not this calendar's:
        no change, and no holiday to look after. During a release's rollout the minute's job
        had run on old and new workers in turn, each undoing the other: a day shut and
        opened every minute, its bookings cancelled with an SMS on a day that was to open."""
        horizon = self.horizon(today)
        mine = self.calendar_name()
        now_s = int(unix_time())
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(keys.HOLIDAY_CALENDARS, mine, now_s)
            pipe.hgetall(keys.HOLIDAY_CALENDARS)
            pipe.get(keys.HOLIDAYS_FOLLOWED)
            _, calendars, raw = await pipe.execute()
        followed = None if raw is None else _followed_decoder.decode(raw)
        others = [
            as_text(name)
            for name, at in calendars.items()
            if as_text(name) != mine and now_s - int(at) < CALENDAR_SETTLE
        ]
        if others and (followed is None or followed.by != mine):
            # Nothing at all, not even the note's leftover bookings: a replan here would write
            # the day from this process's calendar, and undo the other's.
            log.info("official holidays: %s waits for %s to go before following its calendar", mine, others)
            return HolidaysChanged(horizon, set(), added=set(), removed=set(), following=None)
        now = self.holidays(horizon[0], horizon[-1])
        following = msgspec.json.encode(
            _Followed(first=horizon[0], last=horizon[-1], holidays=sorted(now), by=mine)
        ).decode()
        if followed is None:
            return HolidaysChanged(horizon, now, added=now, removed=set(), following=following)
        before = set(followed.holidays)
        seen = {day for day in horizon if followed.first <= day <= followed.last}
        added, removed = (now - before) & seen, (before - now) & seen
        return HolidaysChanged(horizon, now, added, removed, following=None if as_text(raw) == following else following)

    def calendar_name(self) -> str:
        """Which official calendar this process follows: the `holidays` release, or none."""
        if not self.official_holidays:
            return "none"
        import holidays

        return f"holidays {holidays.__version__}"

    async def holidays_followed(self, changed: HolidaysChanged) -> None:
        """Note that the counters follow ``changed``'s holidays now, over its horizon."""
        if changed.following is not None:
            await self.redis.set(keys.HOLIDAYS_FOLLOWED, changed.following)

    async def rebuild(
        self,
        *,
        session: AsyncSession,
        today: dt.date,
        batch: int = 500,
        still_ours: Callable[[], Awaitable[None]] | None = None,
    ) -> int:
        """Recompute every counter of the horizon from the record, then mark them built,
        unless ``still_ours`` raises (asked before and after the mark: the recount's lock was
        taken over). Returns the office-days written."""
        servers = await self.servers()  # before the count: one that changes during it counts again
        meta_seen = await self.redis.get(keys.META_CHANGED)
        with self.reads.changing(None):
            written = await self._write_days(session=session, days=self.horizon(today), mode="replace", batch=batch)
            await self._meta_since(meta_seen, session=session, codes=None, days=self.horizon(today))
        await self._rebuild_holds(session=session, today=today)
        await self._rebuild_waitlists(session=session, today=today)
        await self._drop_geo_sets()
        # Offices may have been imported into the record since the instances loaded theirs.
        await reread_everywhere(self.redis)
        if still_ours is not None:
            await still_ours()
        await self.redis.set(keys.REBUILT_AT, f"{self.clock.now().isoformat()}|{servers}")
        if still_ours is not None:
            try:  # taken over between the look and the mark (the lock and the marker share no slot)
                await still_ours()
            except BaseException:
                await self.redis.delete(keys.REBUILT_AT)  # counted once more: the safe side
                raise
        log.info("capacity rebuilt", extra={"office_days": written})
        return written

    async def extend_horizon(self, *, session: AsyncSession, today: dt.date) -> int:
        """Write the office-days missing from the horizon (the day that just entered it),
        leaving the ones already there untouched."""
        meta_seen = await self.redis.get(keys.META_CHANGED)
        days = self.horizon(today)
        written = await self._write_days(session=session, days=days, mode="create")
        await self._meta_since(meta_seen, session=session, codes=None, days=days)
        return written

    async def _meta_since(
        self, seen: Any, *, session: AsyncSession, codes: list[str] | None, days: list[dt.date]
    ) -> None:
        """Days just written from a read of the record that a status's or crowd cap's commit
        may have followed (``keys.META_CHANGED`` moved): told before they were written, it
        found them absent and left them, or was written over. Told the record's now."""
        if await self.redis.get(keys.META_CHANGED) != seen:
            await self._tell_meta(session=session, codes=codes, days=days)

    async def _write_days(self, *, session: AsyncSession, days: list[dt.date], mode: str, batch: int = 500) -> int:
        self.reads.forget_all()  # told by ``rebuild`` when it replaces days (created ones nobody kept)
        written = 0
        plans = await load_plans(session)
        caps = await load_caps(session, first=days[0], last=days[-1])
        calendar = await self.calendar(session, first=days[0], last=days[-1])
        count_id = _new_count()
        for start in range(0, len(plans), batch):
            chunk = plans[start : start + batch]
            used = await count_used(session, office_ids=[p.office_id for p in chunk], days=days, now=self.clock.now())
            calls = [
                (
                    [keys.office_day(plan.code, day)],
                    [mode, *self._day_args(plan, day, used, caps, calendar, count_id)],
                )
                for plan in chunk
                for day in days
            ]
            replies = await self.scripts.run_many(self.scripts.materialise, calls)
            written += sum(1 for reply in replies if reply)
        return written

    async def _rebuild_holds(self, *, session: AsyncSession, today: dt.date) -> None:
        # A trip to Redis for a page of keys or rows, not one for each: a national horizon has
        # a million citizens holding and more bookings, and a trip each, or all of them read at
        # once, had kept bookings paused for minutes and the process's memory swollen.
        await self.drop_holds()
        rows = await session.stream(
            select(Booking.national_id, Booking.tracking_code, Booking.date, Booking.service_code).where(
                Booking.status.in_(ACTIVE_STATUSES), Booking.date >= today
            )
        )
        async for part in rows.partitions(HOLDS_PER_TRIP):
            async with self.redis.pipeline(transaction=False) as pipe:
                for national_id, tracking_code, day, service_code in part:
                    holds = keys.citizen_holds(national_id)
                    pipe.hset(holds, tracking_code, _held_as(day, service_code))
                    pipe.expire(holds, self._holds_ttl())
                await pipe.execute()
        await self.tell_suspensions(session=session, today=today)

    async def drop_holds(self) -> None:
        """Drop every citizen's holds (a recount writes them again from the record)."""
        page: list[Any] = []
        async for key in self.redis.scan_iter(match=keys.CITIZEN_HOLDS_PATTERN, count=HOLDS_PER_TRIP):
            page.append(key)
            if len(page) == HOLDS_PER_TRIP:
                await self._unlink(page)
                page = []
        await self._unlink(page)

    async def _unlink(self, names: list[Any]) -> None:
        """Drop keys, one command each (a cluster refuses one command over several slots)."""
        if not names:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.unlink(name)
            await pipe.execute()

    async def tell_suspensions(self, *, session: AsyncSession, today: dt.date) -> int:
        """Put every suspension in force in the record into Redis, where booking refuses
        them; how many. Idempotent: the nightly close tells them all each run, so that one
        whose telling was lost (a run stopped after its commit, Redis away) is told by the
        next. A week's suspensions at most: one pipelined trip."""
        suspensions = (
            await session.execute(
                select(Suspension.national_id, func.max(Suspension.until))
                .where(Suspension.until > today)
                .group_by(Suspension.national_id)
            )
        ).all()
        await self.scripts.run_many(
            self.scripts.suspend,
            [
                ([keys.citizen_holds(national_id)], [until.isoformat(), ((until - today).days + 1) * 86400])
                for national_id, until in suspensions
            ],
        )
        return len(suspensions)

    async def _rebuild_waitlists(self, *, session: AsyncSession, today: dt.date) -> None:
        """Every line as the record has it: the lines it has no one waiting in deleted, and each
        other written whole at once (WRITE_LINE), so that a join's own step landing meanwhile
        is either replaced by the record's line or finds its citizen there already."""
        rows = await session.execute(
            select(Office.code, Booking.date, Booking.pool, Booking.tracking_code)
            .join(Office, Office.id == Booking.office_id)
            .where(Booking.status == BookingStatus.WAITLISTED, Booking.date >= today)
            .order_by(Booking.created_at, Booking.id)
        )
        lines: dict[str, tuple[dt.date, list[str]]] = {}
        for code, day, pool, tracking_code in rows:
            lines.setdefault(keys.waitlist(code, day, pool), (day, []))[1].append(tracking_code)
        async for key in self.redis.scan_iter(match=keys.WAITLIST_PATTERN, count=1000):
            if as_text(key) not in lines:
                await self.redis.delete(key)
        calls = [([key], [day_expiry(day, self.clock.tz), *codes]) for key, (day, codes) in lines.items()]
        await self.scripts.run_many(self.scripts.write_line, calls)

    async def _drop_geo_sets(self) -> None:
        """Versions before 2026-12-04 kept each service's offices in a Redis GEO set for the
        nearby search, which now finds them in memory (app.offices.nearest): drop them."""
        async for key in self.redis.scan_iter(match=keys.GEO_PATTERN, count=1000):
            await self.redis.delete(key)

    def require_ready(self) -> None:
        """Refuse (503) whatever would move seats while the counters are being counted again
        from the record (app.capacity.watch): done now, the count could miss it, and a seat
        be sold twice."""
        if not self.ready:
            raise CapacityRebuilding()

    async def confirm_ready(self) -> None:
        """``require_ready`` for a write that may take a while to prepare (a batch of moves):
        where no watch keeps ``ready`` fresh (a job), Redis is asked now."""
        if not self.watched and not await self.is_built():
            raise CapacityRebuilding()
        self.require_ready()

    async def rebuilt_at(self) -> str | None:
        """The mark of the last recount, None while one runs: read twice, a change says one
        began between the reads."""
        marker = await self.redis.get(keys.REBUILT_AT)
        return None if marker is None else as_text(marker)

    async def is_built(self) -> bool:
        """Whether the counters were rebuilt on the Redis servers that hold them now. Another
        server (a restart, or a failover to a replica that had not received the last writes)
        may be short of seats taken: they must be counted again before anyone books. The group
        commit asks once a batch: on a single Redis in one trip shared with the requests'
        (AutoPipeline), the run id read from the raw reply (two trips through the pool, INFO
        parsed, had cost a sixth of the booking rate)."""
        if isinstance(self.redis, RedisCluster):
            marker, servers = await asyncio.gather(self.redis.get(keys.REBUILT_AT), self.servers())
        else:
            marker, info = await self.auto.execute_many([("GET", keys.REBUILT_AT), ("INFO", "server")])
            servers = _run_id(as_text(info))
        built = marker is not None and as_text(marker).partition("|")[2] == servers
        self.mark = as_text(marker) if built and marker is not None else None
        return built

    async def may_commit(self) -> bool:
        """Whether the bookings just held may be committed: Redis is not being counted again,
        and is still the server the counters were built on. Asked by the group commit once a
        batch. A failover to a replica short of the last writes would otherwise sell their
        seats again until the watch's next look (up to a second), and a job's process, which
        no watch keeps ``ready`` fresh, would not see a recount at all."""
        built = await self.is_built()
        if not built and self.watched:
            self.ready = False  # this instance's next bookings wait, until the watch has counted
        return built and self.ready

    async def capped(self, office_code: str, day: dt.date) -> bool:
        """Whether the office-day sells a share of its seats (a restriction, a crowd cap), as
        the counters have it."""
        return int(await self.redis.hget(keys.office_day(office_code, day), "_cap") or 100) < 100

    async def probe_writes(self) -> None:
        """Set a short-lived key on every server that holds counters (each master of a
        cluster): a server full under noeviction (OOM) or with its disk full (MISCONF) answers
        reads and refuses every booking. Raises its refusal."""
        if not isinstance(self.redis, RedisCluster):
            await self.redis.set(keys.WRITE_PROBE, "1", px=5000)
            return
        masters = {node.name for node in self.redis.get_primaries()}
        # Checked at each look against the client's slot map: slots moved between the same
        # masters (a resharding) had left a master with no key, unprobed.
        try:
            if {self.redis.get_node_from_key(key).name for key in self._probes} != masters:
                owners = {slot: nodes[0].name for slot, nodes in self.redis.nodes_manager.slots_cache.items() if nodes}
                self._probes = [key for master in sorted(masters) if (key := _probe_key(owners, master))]
        except RedisClusterException as error:  # a slot the client's map lacks: not a RedisError
            raise RedisError(f"the cluster's slot map: {error}") from error
        await asyncio.gather(*(self.redis.set(key, "1", px=5000) for key in self._probes))

    async def require_no_eviction(self) -> None:
        """Refuse to count seats on Redis servers that may evict keys when memory runs short.
        Every counter carries an expiry, the rebuild marker none: a ``volatile-*`` policy
        (the default of some hosted Redis) would drop a day's counts and keep the marker, and
        the day, counted again from the record without the bookings in flight, would sell
        their seats twice. A server that does not show its configuration is trusted."""
        try:
            if isinstance(self.redis, RedisCluster):
                found = _by_node(
                    await self.redis.config_get("maxmemory-policy", target_nodes=RedisCluster.ALL_NODES),
                    "maxmemory-policy",
                )
                policies = {str(config["maxmemory-policy"]) for config in found.values()}
            else:
                policies = {str((await self.redis.config_get("maxmemory-policy"))["maxmemory-policy"])}
        except ResponseError:  # CONFIG renamed or refused, as hosted Redis often does
            log.warning("Redis does not show its maxmemory-policy: make sure it is noeviction")
            return
        if policies != {"noeviction"}:
            raise EvictionPolicy(
                f"Redis may evict the seat counters (maxmemory-policy {', '.join(sorted(policies))}): "
                "set maxmemory-policy noeviction"
            )

    async def servers(self) -> str:
        """The run ids of the Redis servers (a cluster's masters) that hold the counters."""
        if isinstance(self.redis, RedisCluster):
            found = _by_node(await self.redis.info("server", target_nodes=RedisCluster.PRIMARIES), "run_id")
            return ",".join(sorted(info["run_id"] for info in found.values()))
        return str((await self.redis.info("server"))["run_id"])

    async def replan(
        self,
        *,
        session: AsyncSession,
        office_codes: list[str],
        days: list[dt.date],
        apply: bool,
        calendar: Calendar | None = None,
        template: str | None = None,
        begun_by: dt.datetime | None = None,
    ) -> list[Overflow]:
        """Check (``apply=False``) or write the offices' plans for ``days`` as the calendar and
        template (default: the record's; a template only with one office) make them, keeping
        every booking's seat counted. Returns the overflow: booked seats the plan has no room for.
        ``begun_by``: the slots of its day that have begun by then keep their seats, and are
        never over (a clerk's change during the day: a slot under way sells nothing more, and
        its citizens, in the room or on their way, are not moved out of it).

        Written from the record's calendar, it is written again if a closure was added or
        removed meanwhile (``keys.CLOSURES_CHANGED``): read before that commit and written
        after the closure's own replan, a clerk's change had opened a closed day again (its
        office sold seats nobody could use), or closed a reopened one."""
        if not apply or calendar is not None:
            return await self._replan(session, office_codes, days, apply, calendar, template, begun_by)
        for _ in range(REPLAN_TRIES):
            seen = await self.redis.get(keys.CLOSURES_CHANGED)
            overflow = await self._replan(session, office_codes, days, apply, calendar, template, begun_by)
            if await self.redis.get(keys.CLOSURES_CHANGED) == seen:
                return overflow
        raise ClosuresChanging()

    async def closures_changed(self) -> None:
        """Tell the replans under way that a closure was just added or removed in the record."""
        await self.redis.incr(keys.CLOSURES_CHANGED)

    async def _replan(
        self,
        session: AsyncSession,
        office_codes: list[str],
        days: list[dt.date],
        apply: bool,
        calendar: Calendar | None,
        template: str | None,
        begun_by: dt.datetime | None,
    ) -> list[Overflow]:
        plans = await load_plans(session, codes=office_codes)
        if not plans:
            return []
        office_ids = [plan.office_id for plan in plans] if len(plans) < 500 else None
        calendar = calendar or await self.calendar(session, first=min(days), last=max(days), office_ids=office_ids)
        missing = []
        async with self.redis.pipeline(transaction=False) as pipe:
            for plan in plans:
                for day in days:
                    pipe.exists(keys.office_day(plan.code, day))
            present = iter(await pipe.execute())
        for plan in plans:
            for day in days:
                if not next(present):
                    missing.append((plan.code, day))
        for code, day in missing:
            await self.materialise_day(session=session, office_code=code, day=day)
        overflow: list[Overflow] = []
        for start in range(0, len(plans), 500):
            chunk = plans[start : start + 500]
            calls: list[tuple[list[str], list[Any]]] = []
            for plan in chunk:
                weekly = decode_template(template or plan.template)
                for day in days:
                    kept_to = begun_by.strftime("%H:%M") if begun_by and begun_by.date() == day else ""
                    args: list[Any] = ["apply" if apply else "dry", kept_to]
                    slots = calendar.slots(
                        office_id=plan.office_id, province_id=plan.province_id, template=weekly, day=day
                    )
                    for slot in slots:
                        args += [keys.seats_field(slot.pool, slot.time), slot.seats]
                    calls.append(([keys.office_day(plan.code, day)], args))
            with self.reads.changing([(plan.code, None) for plan in chunk]):
                replies = iter(await self.scripts.run_many(self.scripts.replan, calls))
            for plan in chunk:
                for day in days:
                    raw = next(replies)
                    for i in range(0, len(raw), 3):
                        _, pool, time = as_text(raw[i]).split("|")
                        overflow.append(
                            Overflow(
                                office_code=plan.code,
                                day=day,
                                pool=pool,
                                time=time,
                                seats=int(raw[i + 1]),
                                booked=int(raw[i + 2]),
                            )
                        )
        return overflow

    async def set_status(self, *, office_code: str, status: OfficeStatus, cap_percent: int, today: dt.date) -> None:
        """Make a status change bite in the reserve script at once, for every day of the horizon."""
        day_keys = [keys.office_day(office_code, day) for day in self.horizon(today)]
        with self.reads.changing([(office_code, None)]):
            await self.scripts.set_meta(keys=day_keys, args=[status.value, *([cap_percent] * len(day_keys))])

    async def refresh_meta(self, *, session: AsyncSession, today: dt.date, codes: list[str] | None = None) -> MetaTold:
        """Recompute status and cap of every office-day in the horizon (all offices, or ``codes``)
        from the record, after a status change or a crowd cap: the offices told, and those whose
        days it eased (their lines take the room first: ``BookingService.fill_waitlists``)."""
        await self.redis.incr(keys.META_CHANGED)  # first: a day written meanwhile is told again by its writer
        return await self._tell_meta(session=session, codes=codes, days=self.horizon(today))

    async def _tell_meta(self, *, session: AsyncSession, codes: list[str] | None, days: list[dt.date]) -> MetaTold:
        """Status and cap of the office-days, from the record; written again if another telling
        began meanwhile (``keys.META_CHANGED`` moved), whose read may be the newer: written
        after it, an older read had opened a day a block had just shut, for up to a minute."""
        eased: set[str] = set()
        for _ in range(REPLAN_TRIES):
            seen = await self.redis.get(keys.META_CHANGED)
            told = await self._set_meta(session=session, codes=codes, days=days, eased=eased)
            if await self.redis.get(keys.META_CHANGED) == seen:
                break
        return MetaTold(told, eased)

    async def _set_meta(
        self, *, session: AsyncSession, codes: list[str] | None, days: list[dt.date], eased: set[str]
    ) -> int:
        """Write the offices' status and caps; adds to ``eased`` those it eased a day of."""
        plans = await load_plans(session, codes=codes)
        caps = await load_caps(session, first=days[0], last=days[-1])
        calls = [
            ([keys.office_day(plan.code, day) for day in days], [plan.status, *(plan.cap(day, caps) for day in days)])
            for plan in plans
        ]
        with self.reads.changing(None if codes is None else [(code, None) for code in codes]):
            for start in range(0, len(calls), 1000):
                replies = await self.scripts.run_many(self.scripts.set_meta, calls[start : start + 1000])
                batch = plans[start : start + 1000]
                eased.update(plan.code for plan, days_eased in zip(batch, replies, strict=True) if days_eased)
        return len(plans)


class HolidaysChanged(NamedTuple):
    horizon: list[dt.date]
    holidays: set[dt.date]
    """The horizon's official holidays, as the calendar has them now."""
    added: set[dt.date]
    removed: set[dt.date]
    following: str | None
    """What to note once the counters follow them (``Capacity.holidays_followed``); None: noted."""


class _Followed(msgspec.Struct, frozen=True):
    first: dt.date
    last: dt.date
    holidays: list[dt.date]
    by: str = ""  # the calendar (``Capacity.calendar_name``) that wrote it


CALENDAR_SETTLE = 10 * 60
"""Seconds since another official calendar was last looked at by the minute's job before this
one's is followed (``Capacity.holidays_changed``): a release's rollout, workers old and new."""


_followed_decoder = msgspec.json.Decoder(_Followed)


class Noted(NamedTuple):
    """A change noted for the minute's job (``Capacity.apply_later``)."""

    change: str
    """Its id, for ``Capacity.applied``."""
    earlier: bool
    """A change noted before and not yet applied was folded into it."""


class MetaTold(NamedTuple):
    offices: int  # told their status and caps
    eased: set[str]  # those with a day eased (a block gone, a higher cap)


def _idempotency_key(office_code: str, idempotency: tuple[str, str] | None) -> str:
    # Scripts take a fixed list of keys; a request without an idempotency key passes a dummy
    # in the office's hash slot.
    return keys.idempotency(office_code, *idempotency) if idempotency else keys.idempotency(office_code, "-", "-")


def _hold_tag(idempotency_key: str) -> str:
    """HOLD's tag for a request with an Idempotency-Key (its Redis key): the same for the same
    request sent twice, short whatever the key."""
    return hashlib.blake2b(idempotency_key.encode(), digest_size=8).hexdigest()


def _reserve_call(seat: SeatRequest) -> tuple[list[str], list[str | int]]:
    """RESERVE's keys and arguments for a seat request."""
    keys_ = [
        keys.office_day(seat.office_code, seat.day),
        _idempotency_key(seat.office_code, seat.idempotency),
        keys.waitlist(seat.office_code, seat.day, seat.pool),
    ]
    ttl = IDEMPOTENCY_TTL_SECONDS if seat.idempotency else 0
    ahead = "1" if seat.ahead_of_waitlist else ""
    return keys_, [seat.pool, seat.time or "", seat.not_before or "", seat.tracking_code, ttl, ahead, seat.giving_back]


def _run_id(info: str) -> str:
    """The run id in an ``INFO server`` reply."""
    return info.partition("run_id:")[2].partition("\r\n")[0]


def _new_count() -> str:
    """An id for one count of the record into Redis (a rebuild, a day materialised)."""
    return uuid.uuid4().hex[:12]


def _release_call(
    seat: Seat, not_before: str | None, idempotency: tuple[str, str] | None
) -> tuple[list[str], list[str]]:
    """RELEASE's keys and arguments for a seat given back."""
    keys_ = [
        keys.office_day(seat.office_code, seat.day),
        _idempotency_key(seat.office_code, idempotency),
        keys.waitlist(seat.office_code, seat.day, seat.pool),
    ]
    return keys_, [seat.pool, seat.time, not_before or "", seat.counted_in]


def _promotions(reply: Any) -> list[Promotion]:
    """RELEASE's answer: the day's count, then {tracking code, slot time, ...} of the
    citizens promoted (nothing at all when the day is not in Redis)."""
    if not reply:
        return []
    count = as_text(reply[0])
    return [
        Promotion(tracking_code=as_text(reply[i]), time=as_text(reply[i + 1]), counted_in=count)
        for i in range(1, len(reply), 2)
    ]


def _reserved(reply: Any) -> Reserved | None:
    """RESERVE's answer: the seat taken (or the earlier booking's, on a replay), None when
    the day is not in Redis, or the refusal raised."""
    outcome, slot, code = reply[0], reply[1], reply[2]
    outcome = as_text(outcome)
    if outcome == "OK":
        return Reserved(time=as_text(slot), tracking_code=as_text(code), counted_in=as_text(reply[3]))
    if outcome == "REPLAY":
        return Reserved(time="", tracking_code=as_text(code), replay=True)
    if outcome == "NO_DAY":
        return None
    raise _RESERVE_ERRORS[outcome]()


def _hold_error(reply: Any, limit: int) -> DomainError | None:
    """HOLD's refusal, if it refused."""
    outcome = as_text(reply[0])
    if outcome == "SUSPENDED":
        return BookingSuspended(dt.date.fromisoformat(as_text(reply[1])))
    if outcome == "SAME_DAY":
        return AlreadyBookedThatDay()
    if outcome == "TOO_MANY":
        return TooManyBookings(limit)
    if outcome == "FORGOTTEN":
        return DuplicateRequest()  # only a late run of a request answered 503 meets it; nobody hears
    return None


_RESERVE_ERRORS: dict[str, type[DomainError]] = {
    "BLOCKED": OfficeBlocked,
    "CLOSED": OfficeClosed,
    "OVER": DayOver,
    "NO_SLOT": NoSuchSlot,
    "BEGUN": SlotBegun,
    "FULL": SlotFull,
    "DAY_FULL": DayFull,
    "DUPLICATE": DuplicateRequest,
    "FORGOTTEN": DuplicateRequest,  # as in _hold_error
}


_WAITLIST_ERRORS: dict[str, type[Exception]] = {
    "BLOCKED": OfficeBlocked,
    "CLOSED": OfficeClosed,
    "OVER": DayOver,
    "FREE": SeatsAvailable,
}


async def load_caps(session: AsyncSession, *, first: dt.date, last: dt.date) -> list[CapRule]:
    rows = await session.execute(
        select(CrowdCap.province_id, CrowdCap.starts_on, CrowdCap.ends_on, CrowdCap.percent).where(
            CrowdCap.lifted_at.is_(None), CrowdCap.starts_on <= last, CrowdCap.ends_on >= first
        )
    )
    return [CapRule(province_id=p, starts_on=s, ends_on=e, percent=pct) for p, s, e, pct in rows]


async def load_plans(session: AsyncSession, *, codes: Iterable[str] | None = None) -> list[OfficePlan]:
    query = (
        select(Office.id, Office.code, City.province_id, Office.status, Office.cap_percent, CapacityTemplate.template)
        .join(CapacityTemplate, CapacityTemplate.office_id == Office.id)
        .join(City, City.id == Office.city_id)
    )
    if codes is not None:
        query = query.where(Office.code.in_(list(codes)))
    rows = await session.execute(query.order_by(Office.id))
    return [
        OfficePlan(
            office_id=oid,
            code=code,
            province_id=province_id,
            status=OfficeStatus(status).value,
            cap_percent=cap,
            template=template,
        )
        for oid, code, province_id, status, cap, template in rows
    ]


class Used:
    """The seats the record counts taken on each office-day, by slot (pool, time), as Redis
    counts them: the bookings standing, and the served and absent whose slot has begun (their
    seats were used up: under a cap, the morning's served are people let in, and counting only
    those standing had a mid-day recount sell the afternoon past the cap by that many). A
    citizen served before their slot (app.console.service.Console.serve) gave the seat
    back, unless the day was capped: a cap counts the people let in."""

    def __init__(self) -> None:
        self._held: dict[tuple[int, dt.date], dict[tuple[str, str], int]] = defaultdict(dict)
        self._served_early: dict[tuple[int, dt.date], dict[tuple[str, str], int]] = defaultdict(dict)

    def add(self, office_id: int, day: dt.date, slot: tuple[str, str], count: int, *, held: bool) -> None:
        counts = (self._held if held else self._served_early)[(office_id, day)]
        counts[slot] = counts.get(slot, 0) + count

    def on(self, office_id: int, day: dt.date, *, capped: bool) -> dict[tuple[str, str], int]:
        held = self._held.get((office_id, day), {})
        early = self._served_early.get((office_id, day), {}) if capped else {}
        return {slot: held.get(slot, 0) + early.get(slot, 0) for slot in held.keys() | early.keys()}


async def count_used(session: AsyncSession, *, office_ids: list[int], days: list[dt.date], now: dt.datetime) -> Used:
    """The seats taken per office, day and slot, as the record has them (see ``Used``)."""
    rows = await session.execute(
        select(Booking.office_id, Booking.date, Booking.pool, Booking.slot_time, Booking.status, func.count())
        .where(
            Booking.office_id.in_(office_ids),
            Booking.date.in_(days),
            Booking.status.in_((*SEAT_STATUSES, BookingStatus.SERVED, BookingStatus.NO_SHOW)),
        )
        .group_by(Booking.office_id, Booking.date, Booking.pool, Booking.slot_time, Booking.status)
    )
    begun = (now.date(), now.strftime("%H:%M"))  # as serve decides "before its slot"
    used = Used()
    for office_id, day, pool, time, status, count in rows:
        early = status == BookingStatus.SERVED and (day, time) > begun
        used.add(office_id, day, (pool, time), count, held=not early)
    return used


async def day_for_reading(capacity: Capacity, *, sessions: Sessions, office_code: str, day: dt.date) -> DayView:
    """The office-day as Redis has it, materialised first if it is not there yet."""
    return _view(await capacity.counted_for_reading(sessions=sessions, office_code=office_code, day=day))


def _view(counted: CountedDay) -> DayView:
    """The whole office-day, every pool's slots in time order."""
    slots = [slot for pool, columns in counted.pools.items() for slot in _slot_views(pool, columns, counted.cap)]
    slots.sort(key=lambda s: (s.time, s.pool))
    return DayView(status=counted.status, cap_percent=counted.cap, slots=slots)


def _slot_views(pool: str, columns: Columns, cap: int, first: int = 0) -> list[SlotView]:
    """One pool's slots from the ``first`` on; what each can still take is bounded by the
    day's room in the pool under its cap (``day_room``), counted over all its slots."""
    times, each_seats, each_used = columns
    # Without a cap only each slot's own seats bound it, as in RESERVE: summed over the day,
    # the holders of a slot a new plan dropped (0 seats, counted until moved) hid the seats
    # it added, and their own move found none. (The sum of all seats never binds.)
    room = day_room(sum(each_seats), sum(each_used), cap) if cap < 100 else sum(each_seats)
    return [
        SlotView(pool=pool, time=time, seats=seats, used=used, free=max(0, min(seats - used, room)))
        for time, seats, used in zip(times[first:], each_seats[first:], each_used[first:], strict=True)
    ]


def _abandoned(ttl_left: int) -> bool:
    """Whether an Idempotency-Key with this much of its life left (TTL's answer; below 0: no
    such key) was taken ABANDONED_KEY_SECONDS ago or more."""
    return ttl_left >= 0 and IDEMPOTENCY_TTL_SECONDS - ttl_left >= ABANDONED_KEY_SECONDS


def _by_node(found: dict[Any, Any], field: str) -> dict[Any, Any]:
    """A command's replies from a cluster's nodes, by node: redis-py gives the reply of a
    command that went to one node alone (a one-shard cluster), ``field`` among its own."""
    return {"the node": found} if field in found else found


def _held_as(day: dt.date, service_code: str) -> str:
    """What a citizen's holds hash keeps of a booking ("date|service"), as HOLD writes it."""
    return f"{day.isoformat()}|{service_code}"


def _probe_key(owners: dict[int, str], master: str) -> str | None:
    """A write probe's key in a slot the master owns (``owners``: slot -> master); None when
    the client knows of none yet. Some 16,384 tries for a master of one slot, a few for most."""
    owned = {slot for slot, owner in owners.items() if owner == master}
    if not owned:
        return None
    for n in range(1_000_000):
        if key_slot(str(n).encode()) in owned:
            return f"{keys.WRITE_PROBE}:{{{n}}}"
    return None


class EvictionPolicy(RuntimeError):
    """Redis may evict the counters (``Capacity.require_no_eviction``): a fault of set-up."""
