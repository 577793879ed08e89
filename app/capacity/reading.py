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
from app.capacity.scripts import as_text
from app.redis import AutoPipeline

# The most office-days an instance remembers: a second's reads of the busiest offices, a few
# MB; past it the expired ones go (or, if none has, everything: a cold second, not a leak).
MAX_ENTRIES = 20_000

Slots = list[tuple[str, int, int]]  # (time, seats, used) in time order
Columns = tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...]]  # times, seats, used
# A pool's day in sum: seats, used, and the times of the slots with a seat left, in order.
# A plain tuple: the collector stops tracking those, not NamedTuples.
PoolTotals = tuple[int, int, tuple[str, ...]]
_NO_TOTALS: PoolTotals = (0, 0, ())


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


class DaySums:
    """One office-day in sum, pool by pool, as a list of offices shows it: status, cap, and
    each pool's seats, used, and the times of its slots with a seat left, in order.

    A nearby search reads thirty offices and needs no more of each. Parsing every day into its
    slots (CountedDay) and summing them after had been a third of a search's time on a working
    day; summing as the fields are read costs two thirds of that. (Summing in Redis, in a Lua
    script, cost Redis 36 us a day against HGETALL's 4: more than it saved here, on shared cores.)
    """

    __slots__ = ("cap", "pools", "status")

    def __init__(self, fields: Mapping[str, str]) -> None:
        self.status = fields.get("_status", "active")
        self.cap = int(fields.get("_cap", "100"))
        found: dict[str, tuple[list[int], list[str]]] = {}
        for field in [field for field in fields if field.startswith("s|")]:  # "s|pool|HH:MM"
            seats, used = int(fields[field]), int(fields.get("u" + field[1:], 0))
            sums = found.get(field[2:-6])
            if sums is None:
                sums = found[field[2:-6]] = ([0, 0], [])
            sums[0][0] += seats
            sums[0][1] += used
            if seats > used:
                sums[1].append(field[-5:])
        self.pools: dict[str, PoolTotals] = {
            pool: (seats, used, tuple(sorted(free))) for pool, ((seats, used), free) in found.items()
        }

    def of(self, pool: str) -> PoolTotals:
        """One pool's sums; nothing when the day has no slot of it."""
        return self.pools.get(pool, _NO_TOTALS)


EMPTY_DAY = DaySums({})
"""A day Redis does not hold even after materialising (a race with a rebuild): nothing free."""


class DayReader:
    def __init__(self, auto: AutoPipeline, *, ttl: float) -> None:
        self.auto = auto  # reads share their trips to Redis with the other requests'
        self.ttl = ttl
        self._days: dict[tuple[str, dt.date], tuple[float, CountedDay]] = {}
        self._sums: dict[tuple[str, dt.date], tuple[float, DaySums]] = {}
        self._swept_at = 0.0
        self._waiting: dict[str, tuple[float, int]] = {}

    async def day(self, office_code: str, day: dt.date) -> CountedDay | None:
        """The office-day's counters; None when Redis does not hold the day (yet)."""
        found = _fresh(self._days, (office_code, day), time.monotonic())
        if found is not None:
            return found
        [raw] = await self.auto.execute_many([("HGETALL", keys.office_day(office_code, day))])
        fields = _fields(raw)
        counted = None if fields is None else CountedDay(fields)
        self._keep(self._days, {(office_code, day): counted}, {})
        return counted

    async def sums(self, codes: list[str], day: dt.date) -> dict[str, tuple[DaySums | None, int]]:
        """Each office's day in sum (None when Redis does not hold the day) and its "people
        waiting" report, the ones not remembered read in one round trip."""
        # One look at the clock and one sweep for the lot: a search asks for thirty offices.
        now = time.monotonic()
        summed = {code: _fresh(self._sums, (code, day), now) for code in codes}
        waiting = {code: _fresh(self._waiting, code, now) for code in codes}
        unread_sums = [code for code, found in summed.items() if found is None]
        unread_waiting = [code for code, found in waiting.items() if found is None]
        commands: list[tuple[str, ...]] = [("HGETALL", keys.office_day(code, day)) for code in unread_sums]
        if unread_waiting:
            commands.append(("HMGET", keys.WAITING_NOW, *unread_waiting))
        if commands:
            replies = await self.auto.execute_many(commands)
            for code, raw in zip(unread_sums, replies, strict=False):
                fields = _fields(raw)
                summed[code] = None if fields is None else DaySums(fields)
            if unread_waiting:
                reported_now = dt.datetime.now(dt.UTC)
                for code, reported in zip(unread_waiting, replies[-1], strict=True):
                    waiting[code] = waiting_report(reported, reported_now)[0]
            self._keep(
                self._sums,
                {(code, day): summed[code] for code in unread_sums},
                {code: waiting[code] or 0 for code in unread_waiting},
            )
        return {code: (summed[code], waiting[code] or 0) for code in codes}

    def forget(self, office_code: str, day: dt.date | None = None) -> None:
        """Drop what this instance remembers of an office-day (of every day: ``day=None``)."""
        if day is not None:
            self._days.pop((office_code, day), None)
            self._sums.pop((office_code, day), None)
        else:
            for memory in (self._days, self._sums):
                for key in [key for key in memory if key[0] == office_code]:
                    del memory[key]
        self._waiting.pop(office_code, None)

    def forget_all(self) -> None:
        self._days.clear()
        self._sums.clear()
        self._waiting.clear()

    # -- the memory --

    def _keep(
        self,
        memory: dict[tuple[str, dt.date], tuple[float, Any]],
        days: Mapping[tuple[str, dt.date], Any],
        waiting: dict[str, int],
    ) -> None:
        """Remember what was just read (days as ``memory`` keeps them), for ``ttl`` seconds."""
        if self.ttl <= 0:
            return
        now = time.monotonic()
        self._sweep(now)
        for kept in (self._days, self._sums, self._waiting):
            if len(kept) >= MAX_ENTRIES:
                _drop_expired(kept)
        until = now + self.ttl
        # A day Redis does not hold is materialised by the caller and read again: not kept.
        memory.update((key, (until, found)) for key, found in days.items() if found is not None)
        self._waiting.update((code, (until, count)) for code, count in waiting.items())

    def _sweep(self, now: float) -> None:
        """Drop what has expired, once a ``ttl``: what is kept is then about a second's reads,
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


def _fields(raw: Mapping[Any, Any] | list[Any]) -> Mapping[str, str] | None:
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
    """Drop the expired entries, in place (or all, if none has: a cold second, not a leak)."""
    now = time.monotonic()
    for key in [key for key, entry in entries.items() if entry[0] <= now]:
        del entries[key]
    if len(entries) >= MAX_ENTRIES:
        entries.clear()
