"""Each office's standing for a service on a day (app.load.ranking), kept between searches.

A nearby search weighs thirty offices. Working out each one's standing from its counters
(the seat pool the service books from, the day's cap, the load, the people waiting) had been
most of a search's own work, though it changes only when the counters do; only the distance
and the clock change from one search to the next. So an instance keeps each standing it
worked out for as long as its copy of the counters keeps what it came from
(app.capacity.reading), and forgets it when the copy forgets that: at once for a change made
here, within a ``ttl`` for one told by another instance. It forgets an office's standings too
when the directory reads the office again (its template may give a service a pool of its own).

A service's standings on a day are kept in arrays, a row per office as the service's k-d tree
holds them (app.offices.nearest.Layout), so that a search reads a few numbers an office from
them and ranks its thirty offices in a dozen calls into numpy. Weighing each office in Python,
from a standing kept in a dict, had been a third of a search, and most of it waiting on
memory: from random points, a search's offices are scattered over a worker's 50 MB.
"""

from __future__ import annotations

import datetime as dt

import numpy as np

from app.capacity.plan import minute_of
from app.capacity.reading import DayReader
from app.load.ranking import Standing, next_free_minute, tier_of
from app.offices.nearest import Layout

MAX_ROWS = 1_000_000
"""The most rows an instance keeps in its tables, about 100 MB: a new table past it is used by
its search and not kept. One day of the five common services is 85,000 rows; every service
on every day of the horizon, searched within one ``keep``, would be about two million."""


class Table:
    """One service's standings on one day, by the rows of the service's offices (``layout``).
    A row stands until ``until`` (``time.monotonic``; 0: to be worked out again)."""

    __slots__ = ("layout", "next_minute", "not_before", "partial", "standings", "tier", "until")

    def __init__(self, layout: Layout) -> None:
        count = len(layout.codes)
        self.layout = layout
        self.until = np.zeros(count)
        self.partial = np.zeros(count)  # Standing.partial: the score's terms the counters move
        self.tier = np.zeros(count, dtype=np.intp)  # ranking.tier_of
        # The minute of the next free slot after ``not_before`` (ranking.next_free_minute),
        # worked out again once the clock has passed it.
        self.next_minute = np.zeros(count)
        self.not_before = -1  # minutes after midnight of the latest ``not_before`` looked up
        self.standings: list[Standing | None] = [None] * count

    def put(self, row: int, standing: Standing, until: float, not_before: str) -> None:
        """A standing worked out now, kept until ``until`` (0: used by its search alone)."""
        self.standings[row] = standing
        self.partial[row] = standing.partial
        self.tier[row] = tier_of(standing)
        self.next_minute[row] = next_free_minute(standing.free_times, not_before)
        self.until[row] = until

    def next_minutes(self, rows: np.ndarray, not_before: str) -> np.ndarray:
        """Each row's next free slot after ``not_before`` (ranking.next_free_minute)."""
        minute = minute_of(not_before) if not_before else -1
        if minute < self.not_before:
            self.next_minute[:] = -1  # the clock went back: every row is looked up again
        self.not_before = max(self.not_before, minute)
        found = self.next_minute[rows]
        # The first slot after an earlier time is still the first after this one, unless the
        # clock has passed it (a day with none left has none later either).
        passed = found <= minute
        if passed.any():
            standings = self.standings
            for row in rows[passed].tolist():
                standing = standings[row]
                assert standing is not None  # every row searched was put first
                self.next_minute[row] = next_free_minute(standing.free_times, not_before)
            found = self.next_minute[rows]
        return found


class Standings:
    def __init__(self, reads: DayReader) -> None:
        self.keep_seconds = reads.keep  # no standing outlives its counters' copy (DayReader.keep)
        self._tables: dict[tuple[dt.date, str], Table] = {}
        self._searched: dict[tuple[dt.date, str], float] = {}  # each table's last search (monotonic)
        self._rows = 0
        self._dropped_at = 0.0
        reads.on_forget(self.forget)

    def of(self, service_code: str, day: dt.date, layout: Layout, now: float) -> Table:
        """The standings of the service's offices on the day, by the rows of ``layout``
        (``now``: ``time.monotonic``); a row whose time is up is to be worked out again."""
        key = (day, service_code)
        table = self._tables.get(key)
        if table is None or table.layout is not layout:
            if table is not None:  # the service's offices moved, came or went
                self._rows -= len(table.until)
                del self._tables[key]
            table = Table(layout)
            if self._rows + len(layout.codes) <= MAX_ROWS:
                self._tables[key] = table
                self._rows += len(layout.codes)
        self._searched[key] = now
        if now >= self._dropped_at + self.keep_seconds:
            self._drop_unsearched(now)
        return table

    def kept(self, service_code: str, day: dt.date, now: float) -> set[str]:
        """The offices whose standing for the service on the day is kept past ``now``."""
        table = self._tables.get((day, service_code))
        if table is None:
            return set()
        return {table.layout.codes[row] for row in np.flatnonzero(table.until > now).tolist()}

    def forget(self, office_code: str | None, day: dt.date | None = None) -> None:
        """What the copy of the counters forgot (DayReader.on_forget), or the directory read
        again: an office-day, all an office's days (``day`` None), or everything (both None)."""
        for (table_day, _), table in self._tables.items():
            if office_code is None:
                table.until[:] = 0
            elif day is None or day == table_day:
                row = table.layout.rows.get(office_code)
                if row is not None:
                    table.until[row] = 0

    def _drop_unsearched(self, now: float) -> None:
        """Drop the tables nobody searched for a ``keep`` (past days among them): what they
        hold was worked out before that, and has expired."""
        self._dropped_at = now
        for key in [key for key, searched in self._searched.items() if searched + self.keep_seconds <= now]:
            del self._searched[key]
            table = self._tables.pop(key, None)
            if table is not None:
                self._rows -= len(table.until)
