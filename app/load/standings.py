"""Each office's standing for a service on a day (app.load.ranking), kept between searches.

A nearby search weighs thirty offices. Working out each one's standing from its counters
(the seat pool the service books from, the day's cap, the load, the people waiting) had been
most of a search's own work, though it changes only when the counters do; only the distance
and the clock change from one search to the next. So an instance keeps each standing it
worked out for as long as its copy of the counters keeps what it came from
(app.capacity.reading), and forgets it when the copy forgets that: at once for a change made
here, within a ``ttl`` for one told by another instance. It forgets an office's standings too
when the directory reads the office again (its template may give a service a pool of its own).
"""

from __future__ import annotations

import datetime as dt

from app.capacity.reading import DayReader
from app.load.ranking import Standing

Kept = dict[str, tuple[float, Standing]]
"""One service's offices on one day: office code -> (until when, by ``time.monotonic``; standing)."""

MAX_KEPT = 200_000
"""The most standings an instance keeps (some tens of MB): past it, new ones are used and not
kept until sweeps make room. A worker's searches keep at most thirty each a ``keep``."""


class Standings:
    def __init__(self, reads: DayReader) -> None:
        self.keep_seconds = reads.keep  # no standing outlives its counters' copy (DayReader.keep)
        self._kept: dict[dt.date, dict[str, Kept]] = {}  # day -> service -> offices
        self._count = 0
        # Each service-day's last search and last sweep (``time.monotonic``), one entry for both.
        self._times: dict[tuple[dt.date, str], _Times] = {}
        self._dropped_at = 0.0
        reads.on_forget(self.forget)

    def of(self, service_code: str, day: dt.date, now: float) -> Kept:
        """The standings kept for the service's offices on the day (``now``: ``time.monotonic``);
        an entry whose time is up is to be worked out again."""
        services = self._kept.get(day)
        if services is None:
            services = self._kept[day] = {}
        kept = services.get(service_code)
        key = (day, service_code)
        if kept is None:
            kept = services[service_code] = {}
            times = self._times[key] = _Times(now)
        else:
            times = self._times[key]
            if now >= times.swept + self.keep_seconds:
                # One service-day at a time, so that no search waits for them all: the biggest
                # holds the 17,000 offices of a service every office offers, a few ms to look over.
                times.swept = now
                expired = [code for code, (until, _) in kept.items() if until <= now]
                for code in expired:
                    del kept[code]
                self._count -= len(expired)
        times.searched = now
        if now >= self._dropped_at + self.keep_seconds:
            self._drop_unsearched(now)
        return kept

    def keep(self, kept: Kept, office_code: str, until: float, standing: Standing) -> None:
        """Keep a standing in ``kept`` (from ``of``) until ``until``, if there is room."""
        if office_code not in kept:
            if self._count >= MAX_KEPT:
                return
            self._count += 1
        kept[office_code] = (until, standing)

    def forget(self, office_code: str | None, day: dt.date | None = None) -> None:
        """What the copy of the counters forgot (DayReader.on_forget), or the directory read
        again: an office-day, all an office's days (``day`` None), or everything (both None)."""
        if office_code is None:
            for services in self._kept.values():
                for kept in services.values():
                    kept.clear()
            self._count = 0
            return
        for services in self._kept.values() if day is None else [self._kept.get(day, {})]:
            for kept in services.values():
                if kept.pop(office_code, None) is not None:
                    self._count -= 1

    def _drop_unsearched(self, now: float) -> None:
        """Drop the service-days nobody searched for a ``keep`` (past days among them): what
        they hold was worked out before that, and has expired."""
        self._dropped_at = now
        for day, service_code in [
            key for key, times in self._times.items() if times.searched + self.keep_seconds <= now
        ]:
            del self._times[day, service_code]
            services = self._kept[day]
            self._count -= len(services.pop(service_code))
            if not services:
                del self._kept[day]


class _Times:
    """When a service-day was last searched for, and last swept."""

    __slots__ = ("searched", "swept")

    def __init__(self, now: float) -> None:
        self.searched = self.swept = now
