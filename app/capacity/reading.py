"""Reading the live counters, for the pages and lists that show them (slots, nearby, load).

Reads outnumber bookings many times over in a rush, and the same few office-days are read
over and over: every citizen near a hot office gets it among the nearby candidates. So each
instance keeps what it read for ``ttl`` seconds (1 by default) and answers from that.

What a reader may see is at most ``ttl`` seconds old, and what this instance itself changed
it sees at once (``Capacity`` forgets an office-day it writes). That is harmless for
correctness: nothing is booked from these figures; the reserve script decides every seat
against the live counters, so a citizen shown a seat that went a moment ago is told "full",
never overbooked. ``ttl=0`` reads Redis every time.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from typing import Any, cast

from app.capacity import keys
from app.capacity.plan import SHARED_POOL
from app.capacity.scripts import as_text
from app.redis import AutoPipeline

# The most office-days an instance remembers: a second's reads of the busiest offices, a few
# MB; past it the expired ones go (or, if none has, everything: a cold second, not a leak).
MAX_ENTRIES = 20_000

Slots = list[tuple[str, int, int]]  # (time, seats, used) in time order
Columns = tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...]]  # times, seats, used
_NO_SLOTS: Columns = ((), (), ())

# One pool's day in sum, as a list of offices shows it: seats, used, and the times of the slots
# with a seat left, in order. A plain tuple: the collector stops tracking those, not NamedTuples.
PoolTotals = tuple[int, int, tuple[str, ...]]


class CountedDay:
    """One office-day as its Redis hash has it, parsed once: status, cap, and each seat
    pool's slots in time order."""

    __slots__ = ("_totals", "cap", "pools", "status")

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
        self._totals: dict[str, PoolTotals] = {}

    def pool_of(self, service_code: str) -> str:
        """The pool a service books from: its own when the office's template gives it one."""
        return service_code if service_code in self.pools else SHARED_POOL

    def columns(self, service_code: str) -> Columns:
        return self.pools.get(self.pool_of(service_code), _NO_SLOTS)

    def totals(self, service_code: str) -> PoolTotals:
        """The service's pool in sum, worked out once for however many searches read this
        copy of the day: every search near a busy office ranks it again."""
        pool = self.pool_of(service_code)
        found = self._totals.get(pool)
        if found is None:
            times, seats, used = self.pools.get(pool, _NO_SLOTS)
            free = tuple(t for t, s, u in zip(times, seats, used, strict=True) if s > u)
            found = self._totals[pool] = (sum(seats), sum(used), free)
        return found


class DayReader:
    def __init__(self, auto: AutoPipeline, *, ttl: float) -> None:
        self.auto = auto  # reads share their trips to Redis with the other requests'
        self.ttl = ttl
        self._days: dict[tuple[str, dt.date], tuple[float, CountedDay]] = {}
        self._swept_at = 0.0
        self._waiting: dict[str, tuple[float, int]] = {}

    async def day(self, office_code: str, day: dt.date) -> CountedDay | None:
        """The office-day's counters; None when Redis does not hold the day (yet)."""
        found = self._fresh_day(office_code, day)
        if found is not None:
            return found
        [raw] = await self.auto.execute_many([("HGETALL", keys.office_day(office_code, day))])
        counted = _counted(raw)
        self._keep({(office_code, day): counted}, {})
        return counted

    async def days(self, codes: list[str], day: dt.date) -> dict[str, tuple[CountedDay | None, int]]:
        """Each office's counters for the day and its "people waiting" report, the ones not
        remembered read in one round trip."""
        # One look at the clock and one sweep for the lot: a search asks for thirty offices.
        now = time.monotonic()
        counted = {code: self._fresh_day(code, day, now) for code in codes}
        waiting = {code: self._fresh_waiting(code, now) for code in codes}
        unread_days = [code for code, found in counted.items() if found is None]
        unread_waiting = [code for code, found in waiting.items() if found is None]
        commands: list[tuple[str, ...]] = [("HGETALL", keys.office_day(code, day)) for code in unread_days]
        if unread_waiting:
            commands.append(("HMGET", keys.WAITING_NOW, *unread_waiting))
        if commands:
            replies = await self.auto.execute_many(commands)
            for code, raw in zip(unread_days, replies, strict=False):
                counted[code] = _counted(raw)
            if unread_waiting:
                reported_now = dt.datetime.now(dt.UTC)
                for code, reported in zip(unread_waiting, replies[-1], strict=True):
                    waiting[code] = waiting_report(reported, reported_now)[0]
            self._keep(
                {(code, day): counted[code] for code in unread_days},
                {code: waiting[code] or 0 for code in unread_waiting},
            )
        return {code: (counted[code], waiting[code] or 0) for code in codes}

    def forget(self, office_code: str, day: dt.date | None = None) -> None:
        """Drop what this instance remembers of an office-day (of every day: ``day=None``)."""
        if day is not None:
            self._days.pop((office_code, day), None)
        else:
            for key in [key for key in self._days if key[0] == office_code]:
                del self._days[key]
        self._waiting.pop(office_code, None)

    def forget_all(self) -> None:
        self._days.clear()
        self._waiting.clear()

    # -- the memory --

    def _fresh_day(self, office_code: str, day: dt.date, now: float | None = None) -> CountedDay | None:
        entry = self._days.get((office_code, day))
        if entry is None or entry[0] <= (now or time.monotonic()):
            return None
        return entry[1]

    def _fresh_waiting(self, office_code: str, now: float) -> int | None:
        entry = self._waiting.get(office_code)
        if entry is None or entry[0] <= now:
            return None
        return entry[1]

    def _keep(self, days: dict[tuple[str, dt.date], CountedDay | None], waiting: dict[str, int]) -> None:
        """Remember what was just read, for ``ttl`` seconds."""
        if self.ttl <= 0:
            return
        now = time.monotonic()
        self._sweep(now)
        if len(self._days) >= MAX_ENTRIES:
            self._days = _unexpired(self._days)
        if len(self._waiting) >= MAX_ENTRIES:
            self._waiting = _unexpired(self._waiting)
        until = now + self.ttl
        # A day Redis does not hold is materialised by the caller and read again: not kept.
        self._days.update((key, (until, found)) for key, found in days.items() if found is not None)
        self._waiting.update((code, (until, count)) for code, count in waiting.items())

    def _sweep(self, now: float) -> None:
        """Drop what has expired, once a ``ttl``: what is kept is then about a second's reads,
        not up to MAX_ENTRIES of old ones, which the garbage collector's full passes would
        have to look through."""
        if now < self._swept_at + self.ttl:
            return
        self._swept_at = now
        self._days = _unexpired(self._days)
        self._waiting = _unexpired(self._waiting)


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


def _counted(raw: Mapping[Any, Any] | list[Any]) -> CountedDay | None:
    """An office-day's HGETALL reply as the shared trip gives it (a map in RESP3, field,
    value, field... in RESP2), parsed; None when Redis does not hold the day."""
    if not raw:
        return None
    if isinstance(raw, list):
        pairs = iter(raw)
        raw = dict(zip(pairs, pairs, strict=True))
    if isinstance(next(iter(raw)), str):
        return CountedDay(raw)  # the client decodes replies (app.redis.connect)
    return CountedDay({as_text(k): as_text(v) for k, v in raw.items()})


def _unexpired(entries: dict[Any, tuple[float, Any]]) -> dict[Any, tuple[float, Any]]:
    now = time.monotonic()
    kept = {key: entry for key, entry in entries.items() if entry[0] > now}
    return kept if len(kept) < MAX_ENTRIES else {}
