"""Reading the live counters, for the pages and lists that show them (slots, nearby, load).

Reads outnumber bookings many times over in a rush, and the same office-days are read over
and over: every citizen near a hot office gets it among the nearby candidates, and a search
reads thirty offices. So each instance keeps what it read, and answers from that.

What a reader may see is at most ``ttl`` seconds old (1 by default). Every change nobat
makes to the counters, and every report of people waiting, is told to all instances
(``changing``, ``waiting_changed``: a sorted set in Redis, which each instance looks at once
a ``ttl``), and each forgets what changed; what did not change it keeps for
``KEEP_SECONDS``. What this instance itself changed it sees at once. A change whose
telling was lost (its instance died between the write and the telling, or a write that timed
out landed after it was told) shows within ``KEEP_SECONDS``.

That is harmless for correctness: nothing is booked from these figures; the reserve script
decides every seat against the live counters, so a citizen shown a seat that went a moment
ago is told "full", never overbooked. ``ttl=0`` reads Redis every time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from bisect import bisect_right
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import islice
from typing import Any, cast

import msgspec
from redis.exceptions import RedisError

from app.capacity import keys
from app.capacity.scripts import HEAR_CHANGES, TELL_CHANGES, as_text
from app.redis import AutoPipeline

log = logging.getLogger(__name__)

# The most office-days an instance remembers, some tens of MB: past it the expired ones go,
# then the oldest read, down to three quarters of it. A rush's searches of one day need
# 17,000; spread over more days within KEEP_SECONDS, the oldest read go first.
MAX_ENTRIES = 20_000

KEEP_SECONDS = 30.0
"""How long an instance keeps what it read of a day while no change to it is heard of: a bound
on what a change whose telling was lost leaves showing. Longer keeps more of a rush's
searches from Redis (a nearby search reads thirty offices), and more in each worker's memory
(MAX_ENTRIES bounds it). At 10 s, searches from all over the country (a worker weighs each
of 85,000 office-services about once a second) read one in eight of their offices again, and
two workers did 4,100 searches a second; at 30 s, 4,750. A telling is lost only when its
instance dies in the 50 ms before it, Redis refuses it, or a write that timed out lands
after it was told: a seat then shows free (told "full" when booked, never sold twice), or
taken, for up to half a minute more."""

TELL_EVERY = 0.05
"""How long the changes made here wait to be told together: a small part of the ``ttl``
within which the other instances see them."""

Slots = list[tuple[str, int, int]]  # (time, seats, used) in time order
Columns = tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...]]  # times, seats, used
Forgetting = Callable[[str | None, dt.date | None], None]


class CountedDay:
    """One office-day as its Redis hash has it, parsed once: status, cap, and each seat
    pool's slots in time order."""

    __slots__ = ("cap", "pools", "status")

    def __init__(self, fields: Mapping[str, str]) -> None:
        self.status = fields.get("_status", "active")
        self.cap = int(fields.get("_cap", "100"))
        found: dict[str, Slots] = {}
        for field, value in fields.items():
            if field.startswith("s|"):
                pool, _, slot = field[2:].partition("|")
                used = fields.get("u" + field[1:], "0")  # "s|pool|time" -> "u|pool|time"
                found.setdefault(pool, []).append((slot, int(value), int(used)))
        # Each pool as three columns, tuples of strings and numbers: a day is then a handful of
        # objects for the garbage collector (which soon stops tracking them), not one per slot.
        # Thousands are kept here; a list of tuples per pool had stopped a worker for 40-75 ms
        # at a time in the collector's passes.
        self.pools: dict[str, Columns] = {
            pool: cast(Columns, tuple(zip(*sorted(slots), strict=True))) for pool, slots in found.items()
        }


NOTHING_COUNTED = CountedDay({})
"""A day Redis does not hold even after materialising (a race with a rebuild): active, no slots."""


class PoolDay(msgspec.Struct, frozen=True, gc=False):
    """One pool's day as a list of offices shows it (``DaySums.of``). The day's own sums serve
    its cap, which bounds the whole day; the rest counts only the slots still ahead."""

    planned: int  # seats the day's slots have, all of them (0: the office takes nobody that day)
    used: int  # seats taken, all of them
    used_ahead: int  # seats taken in the slots not yet begun
    free_ahead: int  # seats left in them, slot by slot (before any cap)
    free_times: tuple[str, ...]  # "HH:MM" of those with a seat left, in order
    next_start: str | None  # when the next of them begins: then these sums change


class DaySums:
    """One office-day in sum, pool by pool, as a list of offices shows it: status, cap, and
    each pool's slots as three columns (times in order, seats, used), summed by ``of``.

    A nearby search reads thirty offices and needs no more of each. Parsing every day into its
    slots (CountedDay) and summing them after had been a third of a search's time on a working
    day; this parses only what the sums need. (Summing in Redis, in a Lua script, cost Redis
    36 us a day against HGETALL's 4: more than it saved here, on shared cores.)
    """

    __slots__ = ("cap", "pools", "status")

    def __init__(self, fields: Mapping[str, str]) -> None:
        self.status = fields.get("_status", "active")
        self.cap = int(fields.get("_cap", "100"))
        found: dict[str, Slots] = {}
        for field in [field for field in fields if field.startswith("s|")]:  # "s|pool|HH:MM"
            slots = found.get(field[2:-6])
            if slots is None:
                slots = found[field[2:-6]] = []
            slots.append((field[-5:], int(fields[field]), int(fields.get("u" + field[1:], 0))))
        # As CountedDay's: columns of strings and numbers, which the collector soon stops tracking.
        self.pools: dict[str, Columns] = {
            pool: cast(Columns, tuple(zip(*sorted(slots), strict=True))) for pool, slots in found.items()
        }

    def of(self, pool: str, not_before: str = "") -> PoolDay:
        """One pool's sums, counting ahead only the slots after ``not_before`` ("HH:MM"; today's
        that have begun are past: an empty morning is no free seat at 13:00). Nothing when the
        day has no slot of the pool.

        Slot by slot, as RESERVE: a slot holding more than its seats (a same-day cut, its
        citizens served or checked in) is full, not a taker of the others' free seats. (Under a
        cap the day's planned seats bound the day too: the reader's to apply, with day_room.)"""
        columns = self.pools.get(pool)
        if columns is None:
            return _NO_DAY
        times, seats, used = columns
        first = bisect_right(times, not_before) if not_before else 0
        free_times = []
        used_ahead = free_ahead = 0
        for i in range(first, len(times)):
            used_ahead += used[i]
            if seats[i] > used[i]:
                free_ahead += seats[i] - used[i]
                free_times.append(times[i])
        return PoolDay(
            sum(seats),
            sum(used),
            used_ahead,
            free_ahead,
            tuple(free_times),
            times[first] if first < len(times) else None,
        )


_NO_DAY = PoolDay(0, 0, 0, 0, (), None)


EMPTY_DAY = DaySums({})
"""A day Redis does not hold even after materialising (a race with a rebuild): nothing free."""


class DayReader:
    def __init__(self, auto: AutoPipeline, *, ttl: float, keep: float = KEEP_SECONDS) -> None:
        self.auto = auto  # reads share their trips to Redis with the other requests'
        self.ttl = ttl
        self.keep = max(ttl, keep)
        self._days: dict[tuple[str, dt.date], tuple[float, CountedDay]] = {}
        self._sums: dict[tuple[str, dt.date], tuple[float, DaySums]] = {}
        self._waiting: dict[str, tuple[float, int]] = {}
        self._swept_at = 0.0
        # The office-days being read from Redis now (how many reads of each), and when those of
        # them were last forgotten while read: a read asked for before then is answered but not
        # kept, for the change may have overtaken it on its way. Only reads in flight are
        # looked after, not every change a rush makes (thousands a second).
        # A waiting report is looked after as (office, None).
        self._reading: dict[tuple[str, dt.date | None], int] = {}
        self._overtaken: dict[tuple[str, dt.date | None], float] = {}
        self._forgot_all_at = 0.0  # a read asked for before it is not kept either
        self._untold: set[str] = set()  # changes made here, not yet told to the others
        self._telling: asyncio.Task[None] | None = None
        self._heard_up_to: int | None = None  # Redis's clock (ms) when the changes were last read
        self._next_look = 0.0
        self._looking: asyncio.Future[None] | None = None
        self._forgetting: list[Forgetting] = []

    def on_forget(self, forgetting: Forgetting) -> None:
        """Have ``forgetting`` called with each office-day forgotten here (app.load.standings
        keeps what it worked out of them): (office, day); (office, None) for all the office's
        days, or its waiting report; (None, None) for everything."""
        self._forgetting.append(forgetting)

    async def day(self, office_code: str, day: dt.date) -> CountedDay | None:
        """The office-day's counters; None when Redis does not hold the day (yet)."""
        asked = await self.hear()
        found = _fresh(self._days, (office_code, day), asked)
        if found is not None:
            return found
        with self._in_flight([(office_code, day)]):
            [raw] = await self.auto.execute_many([("HGETALL", keys.office_day(office_code, day))])
            fields = day_fields(raw)
            counted = None if fields is None else CountedDay(fields)
            self._keep(self._days, {(office_code, day): counted}, {}, asked)
        return counted

    async def sums(self, codes: list[str], day: dt.date) -> dict[str, tuple[DaySums | None, int, float]]:
        """Each office's day in sum (None when Redis does not hold the day), its "people
        waiting" report, and until when (``time.monotonic``) both stay as read unless forgotten:
        0 when either is not kept. The ones not remembered are read in one round trip."""
        # One look at the clock and one sweep for the lot: a search asks for thirty offices.
        asked = await self.hear()
        summed = {code: _fresh(self._sums, (code, day), asked) for code in codes}
        waiting = {code: _fresh(self._waiting, code, asked) for code in codes}
        unread_sums = [code for code, found in summed.items() if found is None]
        unread_waiting = [code for code, found in waiting.items() if found is None]
        commands: list[tuple[str, ...]] = [("HGETALL", keys.office_day(code, day)) for code in unread_sums]
        if unread_waiting:
            commands.append(("HMGET", keys.WAITING_NOW, *unread_waiting))
        if commands:
            with self._in_flight([(code, day) for code in unread_sums] + [(code, None) for code in unread_waiting]):
                replies = await self.auto.execute_many(commands)
                for code, raw in zip(unread_sums, replies, strict=False):
                    fields = day_fields(raw)
                    summed[code] = None if fields is None else DaySums(fields)
                if unread_waiting:
                    reported_now = dt.datetime.now(dt.UTC)
                    for code, reported in zip(unread_waiting, replies[-1], strict=True):
                        waiting[code] = waiting_report(reported, reported_now)[0]
                self._keep(
                    self._sums,
                    {(code, day): summed[code] for code in unread_sums},
                    {code: waiting[code] or 0 for code in unread_waiting},
                    asked,
                )
        return {
            code: (summed[code], waiting[code] or 0, self._kept_until(code, day, summed[code], waiting[code] or 0))
            for code in codes
        }

    def _kept_until(self, code: str, day: dt.date, summed: DaySums | None, waiting: int) -> float:
        """Until when what ``sums`` answers for the office is kept as answered; 0 when it is
        not (not kept, forgotten while read, or since overtaken by another read)."""
        kept_sums, kept_waiting = self._sums.get((code, day)), self._waiting.get(code)
        if kept_sums is None or kept_waiting is None or kept_sums[1] is not summed or kept_waiting[1] != waiting:
            return 0.0
        return min(kept_sums[0], kept_waiting[0])

    @contextmanager
    def changing(self, office_days: Iterable[tuple[str, dt.date | None]] | None) -> Iterator[None]:
        """Around a write to these office-days (day None: all the office's days; None: every
        office-day, a recount): once it is done, or failed (it may have landed all the same),
        they are forgotten here and told to the other instances. Told after the write, not
        before, so that no instance hears of it, reads the day again and keeps what the write
        had not yet changed."""
        try:
            yield
        finally:
            if office_days is None:
                self.forget_all()
                self._tell(keys.EVERY_DAY_CHANGED)
            self._forget_changes(office_days or ())
            for office_code, day in office_days or ():
                self._tell(keys.day_change(office_code, day))

    def forget(self, office_code: str, day: dt.date | None = None) -> None:
        """Drop what this instance remembers of an office-day (of every day: ``day=None``),
        and keep no read of it now on its way."""
        if day is not None:
            key = (office_code, day)
            self._days.pop(key, None)
            self._sums.pop(key, None)
            if key in self._reading:
                self._overtaken[key] = time.monotonic()
            for forgetting in self._forgetting:
                forgetting(office_code, day)
        else:
            self.forget_offices({office_code})

    def forget_offices(self, office_codes: Collection[str]) -> None:
        """``forget`` every day of each office, the memory looked over once for them all: once
        an office, a province's crowd cap (thousands of offices, told to every instance at
        once) had stopped each instance for seconds."""
        if not office_codes:
            return
        for memory in (self._days, self._sums):
            for key in [key for key in memory if key[0] in office_codes]:
                del memory[key]
        now = time.monotonic()
        self._overtaken.update((key, now) for key in self._reading if key[0] in office_codes)
        for office_code in office_codes:
            self._waiting.pop(office_code, None)  # a report is of the office, not of a day
            for forgetting in self._forgetting:
                forgetting(office_code, None)

    def _forget_changes(self, office_days: Iterable[tuple[str, dt.date | None]]) -> None:
        """``forget`` each office-day, and the offices changed on every day in one pass."""
        offices: set[str] = set()
        for office_code, day in office_days:
            if day is None:
                offices.add(office_code)
            else:
                self.forget(office_code, day)
        self.forget_offices(offices)

    def waiting_changed(self, office_code: str) -> None:
        """The office reported people waiting: forgotten here, and told to the other instances
        (alone: a clerk reports every few minutes, and the office's days stay kept)."""
        self.forget_waiting(office_code)
        self._tell(keys.waiting_change(office_code))

    def forget_waiting(self, office_code: str) -> None:
        """Drop the office's "people waiting" report, and keep no read of it now on its way."""
        self._waiting.pop(office_code, None)
        if (office_code, None) in self._reading:
            self._overtaken[office_code, None] = time.monotonic()
        for forgetting in self._forgetting:
            forgetting(office_code, None)

    def forget_all(self) -> None:
        self._forgot_all_at = time.monotonic()
        self._days.clear()
        self._sums.clear()
        self._waiting.clear()
        for forgetting in self._forgetting:
            forgetting(None, None)

    async def told(self) -> None:
        """Wait until the changes made here are told (before the instance stops)."""
        if self._telling is not None:
            await self._telling

    # -- the changes, told and heard --

    def _tell(self, change: str) -> None:
        # Told even by an instance that keeps no copy itself (ttl 0): the others may.
        self._untold.add(change)
        if self._telling is None or self._telling.done():
            self._telling = asyncio.create_task(self._tell_all())

    async def _tell_all(self) -> None:
        """Tell what changed, a batch every TELL_EVERY seconds: one script for that while's
        bookings, not one with every trip to Redis."""
        while self._untold:
            await asyncio.sleep(TELL_EVERY)
            changes, self._untold = sorted(self._untold), set()
            kept_ms = int(2 * self.keep * 1000)  # longer than any instance keeps a read
            try:
                await self.auto.execute_many([("EVAL", TELL_CHANGES, 1, keys.DAYS_CHANGED, kept_ms, *changes)])
            except RedisError:
                # The others then see these changes once their copies end (KEEP_SECONDS).
                log.warning("could not tell the other instances of %d changed office-days", len(changes))

    async def hear(self) -> float:
        """Forget what the other instances changed, once a ``ttl`` (the readers of that moment
        wait for the one look); the time to read at (``time.monotonic``)."""
        now = time.monotonic()
        if self.ttl > 0 and now >= self._next_look:
            if self._looking is None or self._looking.done():
                self._looking = asyncio.create_task(self._look(now))
            # A reader that goes away (its request cancelled) leaves the look to the others.
            await asyncio.shield(self._looking)
            now = time.monotonic()
        return now

    async def _look(self, started: float) -> None:
        since = self._heard_up_to
        [(now, changes)] = await self.auto.execute_many(
            [("EVAL", HEAR_CHANGES, 1, keys.DAYS_CHANGED, "" if since is None else since)]
        )
        if since is None or int(now) < since:
            # The first look (whatever is kept was read before it), or Redis's clock went back
            # (a replica took over): what was told in between may score below ``since``.
            self.forget_all()
        self._forget_told([as_text(change) for change in changes])
        self._heard_up_to = int(now)
        self._next_look = started + self.ttl
        self._sweep(time.monotonic())

    def _forget_told(self, changes: list[str]) -> None:
        told: list[tuple[str, dt.date | None]] = []
        for change in changes:
            if change == keys.EVERY_DAY_CHANGED:
                self.forget_all()
            elif change.startswith(keys.WAITING_CHANGE):
                self.forget_waiting(change.removeprefix(keys.WAITING_CHANGE))
            else:
                try:
                    told.append(keys.parse_day_change(change))
                except ValueError:
                    log.error("a changed office-day that is not one: %r", change)
        self._forget_changes(told)

    # -- the memory --

    @contextmanager
    def _in_flight(self, office_days: Sequence[tuple[str, dt.date | None]]) -> Iterator[None]:
        """Around a read of these office-days from Redis: a change forgotten meanwhile marks
        them overtaken (``forget``), and ``_keep``, called inside, keeps no read of them asked
        for before that (a read asked for after it, still in flight, is kept: under a steady
        stream of reads an office-day is always being read)."""
        reading = self._reading
        for key in office_days:
            reading[key] = reading.get(key, 0) + 1
        try:
            yield
        finally:
            for key in office_days:
                left = reading[key] - 1
                if left:
                    reading[key] = left
                else:
                    del reading[key]
                    self._overtaken.pop(key, None)

    def _keep(
        self,
        memory: dict[tuple[str, dt.date], tuple[float, Any]],
        days: Mapping[tuple[str, dt.date], Any],
        waiting: dict[str, int],
        asked: float,
    ) -> None:
        """Remember what was just read (days as ``memory`` keeps them, and waiting reports),
        asked for at ``asked``, until ``keep`` seconds after that: unless it was forgotten
        meanwhile (inside ``_in_flight``)."""
        if self.ttl <= 0 or self._forgot_all_at >= asked:
            return
        self._sweep(time.monotonic())
        for kept in (self._days, self._sums, self._waiting):
            if len(kept) >= MAX_ENTRIES:
                _drop_expired(kept)
        until = asked + self.keep
        overtaken = self._overtaken
        # A day Redis does not hold is materialised by the caller and read again: not kept.
        memory.update(
            (key, (until, found))
            for key, found in days.items()
            if found is not None and overtaken.get(key, 0.0) < asked
        )
        self._waiting.update(
            (code, (until, count)) for code, count in waiting.items() if overtaken.get((code, None), 0.0) < asked
        )

    def _sweep(self, now: float) -> None:
        """Drop what has expired, once a ``ttl``: what is kept is then about a ``keep``'s reads,
        not up to MAX_ENTRIES of old ones, which the garbage collector's full passes would
        have to look through."""
        if now < self._swept_at + self.ttl:
            return
        self._swept_at = now
        for kept in (self._days, self._sums, self._waiting):
            _drop_expired(kept)


WAITING_REPORT_SECONDS = 2 * 3600
"""An older "people waiting" report says nothing about now."""


def waiting_report(value: str | bytes | None, now: dt.datetime) -> tuple[int, str | None]:
    """An office's report of people waiting (keys.WAITING_NOW): the count and when it was
    made, or (0, None) when there is none or it is too old."""
    if not value:
        return 0, None
    count, _, at = as_text(value).partition("|")
    try:
        made = dt.datetime.fromisoformat(at)
    except ValueError:
        return 0, None
    if (now - made).total_seconds() > WAITING_REPORT_SECONDS:
        return 0, None
    return int(count), at


def day_fields(raw: Mapping[Any, Any] | list[Any]) -> Mapping[str, str] | None:
    """An office-day's HGETALL reply as the shared trip gives it (a map in RESP3, field,
    value, field... in RESP2), as text; None when Redis does not hold the day."""
    if not raw:
        return None
    if isinstance(raw, list):
        pairs = iter(raw)
        raw = dict(zip(pairs, pairs, strict=True))
    if isinstance(next(iter(raw)), str):
        return raw  # the client decodes replies (app.redis.connect)
    return {as_text(k): as_text(v) for k, v in raw.items()}


def _fresh(memory: Mapping[Any, tuple[float, Any]], key: Any, now: float) -> Any:
    """What ``memory`` keeps under ``key``, None when it has expired or was never read."""
    entry = memory.get(key)
    if entry is None or entry[0] <= now:
        return None
    return entry[1]


def _drop_expired(entries: dict[Any, tuple[float, Any]]) -> None:
    """Drop the expired entries, in place; if that is not enough, the oldest down to three
    quarters of the bound (a dict keeps the order they were first read in)."""
    now = time.monotonic()
    for key in [key for key, entry in entries.items() if entry[0] <= now]:
        del entries[key]
    if len(entries) >= MAX_ENTRIES:
        for key in list(islice(entries, len(entries) - MAX_ENTRIES * 3 // 4)):
            del entries[key]
