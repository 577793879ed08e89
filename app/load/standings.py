"""Each office's standing for a service on a day (app.load.ranking), kept between searches.

A nearby search weighs thirty offices. Working out each one's standing from its counters
(the seat pool the service books from, the day's cap, the load, the people waiting) had been
most of a search's own work, though it changes only when the counters do; only the distance
and the clock change from one search to the next. So an instance keeps each standing it
worked out for as long as its copy of the counters keeps what it came from
(app.capacity.reading), and forgets it when the copy forgets that: at once for a change made
here, within a ``ttl`` for one told by another instance.
"""

from __future__ import annotations

import datetime as dt

from app.capacity.reading import DayReader
from app.load.ranking import Standing

Kept = dict[str, tuple[float, Standing]]
"""One service's offices on one day: office code -> (until when, by ``time.monotonic``; standing)."""


class Standings:
    def __init__(self, reads: DayReader) -> None:
        self.sweep_every = reads.keep
        self._kept: dict[dt.date, dict[str, Kept]] = {}  # day -> service -> offices
        self._swept_at = 0.0
        reads.on_forget(self.forget)

    def of(self, service_code: str, day: dt.date, now: float) -> Kept:
        """The standings kept for the service's offices on the day (``now``: ``time.monotonic``);
        an entry whose time is up is to be worked out again."""
        if now >= self._swept_at + self.sweep_every:
            self._sweep(now)
        services = self._kept.get(day)
        if services is None:
            services = self._kept[day] = {}
        kept = services.get(service_code)
        if kept is None:
            kept = services[service_code] = {}
        return kept

    def forget(self, office_code: str | None, day: dt.date | None) -> None:
        """What the copy of the counters forgot (DayReader.on_forget): an office-day, all an
        office's days (``day`` None), or everything (both None)."""
        if office_code is None:
            self._kept.clear()
            return
        for services in self._kept.values() if day is None else [self._kept.get(day, {})]:
            for kept in services.values():
                kept.pop(office_code, None)

    def _sweep(self, now: float) -> None:
        """Drop what has expired, once a ``keep``: a rush's searches cover the country within it."""
        self._swept_at = now
        for day, services in list(self._kept.items()):
            for service_code, kept in list(services.items()):
                for code in [code for code, (until, _) in kept.items() if until <= now]:
                    del kept[code]
                if not kept:
                    del services[service_code]
            if not services:
                del self._kept[day]
