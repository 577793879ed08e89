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
from collections.abc import Callable, Sequence

import numpy as np

from app.capacity.plan import minute_of
from app.capacity.reading import DayReader
from app.load.ranking import Standing, next_free_minute, tier_of
from app.offices.nearest import Layout

MAX_ROWS = 500_000
"""The most rows an instance's tables hold (some tens of MB of arrays, and the standings kept
in them): past it, the table searched least lately goes. A rush's searches of one day for the
five common services are 85,000 rows."""


class Table:
    """One service's standings on one day, by the rows of the service's offices (``layout``).
    A row's standing is kept until ``until`` (``time.monotonic``; 0: none kept)."""

    __slots__ = ("after", "layout", "next_minute", "partial", "searched", "standings", "swept", "tier", "until")

    def __init__(self, layout: Layout, now: float) -> None:
        count = len(layout.codes)
        self.layout = layout
        self.until = np.zeros(count)
        self.standings: list[Standing | None] = [None] * count
        self.partial = np.zeros(count)  # Standing.partial: the score's terms the counters move
        self.tier = np.zeros(count, dtype=np.intp)  # ranking.tier_of
        # The minute of the next free slot after the minute ``after`` (ranking.next_free_minute):
        # it stands for any later minute until the clock reaches it.
        self.next_minute = np.zeros(count)
        self.after = np.zeros(count)
        self.searched = self.swept = now

    def put(self, row: int, standing: Standing, until: float, not_before: str) -> None:
        """Keep a standing worked out now until ``until``."""
        self.standings[row] = standing
        self.partial[row] = standing.partial
        self.tier[row] = tier_of(standing)
        self.next_minute[row] = next_free_minute(standing.free_times, not_before)
        self.after[row] = _minute(not_before)
        self.until[row] = until

    def drop(self, row: int) -> None:
        self.until[row] = 0.0
        self.standings[row] = None

    def next_minutes(
        self, rows: np.ndarray, standings: Sequence[Standing], kept: np.ndarray, not_before: str
    ) -> np.ndarray:
        """The next free slot after ``not_before`` (ranking.next_free_minute) of each of a
        search's offices (``standings``, those ``kept`` here as this table has them)."""
        minute = _minute(not_before)
        found = self.next_minute[rows]
        # Looked up again: a standing this table does not keep, a slot the clock has reached
        # (a day with none left has none later either), or one looked up after a later minute
        # (searches straddling a minute, or the clock set back).
        again = ~kept | (found <= minute) | (self.after[rows] > minute)
        if again.any():
            row_of = rows.tolist()
            for index in np.flatnonzero(again).tolist():
                standing, row = standings[index], row_of[index]
                found[index] = next_free_minute(standing.free_times, not_before)
                if self.standings[row] is standing and self.after[row] <= minute:
                    self.next_minute[row], self.after[row] = found[index], minute
        return found

    def sweep(self, now: float) -> None:
        """Let go of the standings whose time is up, once a ``keep``."""
        self.swept = now
        for row in np.flatnonzero((self.until > 0) & (self.until <= now)).tolist():
            self.drop(row)


class Standings:
    def __init__(self, reads: DayReader) -> None:
        self.keep_seconds = reads.keep  # no standing outlives its counters' copy (DayReader.keep)
        self._tables: dict[dt.date, dict[str, Table]] = {}  # day -> service -> table
        self._rows = 0
        self._dropped_at = 0.0
        reads.on_forget(self.forget)

    def of(self, service_code: str, day: dt.date, layout: Layout, now: float) -> Table:
        """The standings of the service's offices on the day, by the rows of ``layout``
        (``now``: ``time.monotonic``); a row whose time is up is to be worked out again."""
        services = self._tables.get(day)
        if services is None:
            services = self._tables[day] = {}
        table = services.get(service_code)
        if table is None or table.layout is not layout:
            if table is not None and table.layout.number > layout.number:
                # A search that found its offices before they last changed: its own table,
                # not kept, rather than throwing away the one for the offices as they are.
                return Table(layout, now)
            if table is not None:  # the service's offices moved, came or went
                self._rows -= len(table.standings)
            table = services[service_code] = Table(layout, now)
            self._rows += len(table.standings)
            if self._rows > MAX_ROWS:
                self._drop_least_searched(table)
        table.searched = now
        if now >= table.swept + self.keep_seconds:
            table.sweep(now)
        if now >= self._dropped_at + self.keep_seconds:
            self._drop_unsearched(now)
        return table

    def kept(self, service_code: str, day: dt.date, now: float) -> set[str]:
        """The offices whose standing for the service on the day is kept past ``now``."""
        table = self._tables.get(day, {}).get(service_code)
        if table is None:
            return set()
        return {table.layout.codes[row] for row in np.flatnonzero(table.until > now).tolist()}

    def forget(self, office_code: str | None, day: dt.date | None = None) -> None:
        """What the copy of the counters forgot (DayReader.on_forget), or the directory read
        again: an office-day, all an office's days (``day`` None), or everything (both None)."""
        if office_code is None:
            self._tables.clear()
            self._rows = 0
            return
        for services in self._tables.values() if day is None else [self._tables.get(day, {})]:
            for table in services.values():
                row = table.layout.rows.get(office_code)
                if row is not None and table.until[row]:
                    table.drop(row)

    def _drop_unsearched(self, now: float) -> None:
        """Drop the tables nobody searched for a ``keep`` (past days among them): what they
        hold was worked out before that, and has expired."""
        self._dropped_at = now
        self._drop(lambda table: table.searched + self.keep_seconds <= now)

    def _drop_least_searched(self, keep: Table) -> None:
        """Make room under MAX_ROWS, the table searched least lately first (never ``keep``)."""
        tables = sorted(
            (table for services in self._tables.values() for table in services.values() if table is not keep),
            key=lambda table: table.searched,
        )
        going: set[int] = set()
        rows = self._rows
        for table in tables:
            if rows <= MAX_ROWS:
                break
            going.add(id(table))
            rows -= len(table.standings)
        self._drop(lambda table: id(table) in going)

    def _drop(self, going: Callable[[Table], bool]) -> None:
        for day, services in list(self._tables.items()):
            for service_code, table in list(services.items()):
                if going(table):
                    del services[service_code]
                    self._rows -= len(table.standings)
            if not services:
                del self._tables[day]


def _minute(not_before: str) -> int:
    """Minutes after midnight of ``not_before`` ("HH:MM"); -1 for "" (any time of the day)."""
    return minute_of(not_before) if not_before else -1
