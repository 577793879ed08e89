"""The standings kept between searches (app.load.standings): forgotten with the counters they
came from, swept and dropped with the searches, bounded, and each office's next free slot
looked up again once the clock passes it."""

from __future__ import annotations

import datetime as dt
from typing import cast

import numpy as np
import pytest

from app.capacity.reading import DayReader
from app.load import standings as standings_module
from app.load.ranking import NO_FREE_SLOT, Standing, stand
from app.load.standings import Standings, Table
from app.offices.nearest import Layout, place
from app.redis import AutoPipeline

DAY, NEXT_DAY = dt.date(2030, 2, 7), dt.date(2030, 2, 8)
STANDING = stand(status="active", seats=4, used=1, waiting=0, free_times=("08:00",))


def layout() -> Layout:
    return Layout([place(code, 35.7, 51.4 + i / 100) for i, code in enumerate("ABC")])


LAYOUT = layout()


def _standings() -> tuple[DayReader, Standings]:
    reads = DayReader(cast(AutoPipeline, None), ttl=1.0)  # forgetting asks Redis nothing
    return reads, Standings(reads)


def _kept(standings: Standings, until: float = 100.0, now: float = 0.0) -> None:
    for day in (DAY, NEXT_DAY):
        for service in ("101", "102"):
            table = standings.of(service, day, LAYOUT, now)
            for row in range(3):
                table.put(row, STANDING, until, "")


def test_what_the_counters_forget_the_standings_forget() -> None:
    reads, standings = _standings()
    _kept(standings)
    reads.forget("A", DAY)  # a booking at A that day
    assert standings.kept("101", DAY, 0.0) == standings.kept("102", DAY, 0.0) == {"B", "C"}
    assert standings.of("101", DAY, LAYOUT, 0.0).standings[0] is None  # let go of, not only expired
    assert standings.kept("101", NEXT_DAY, 0.0) == {"A", "B", "C"}
    reads.forget("B")  # every day of B (its template changed)
    reads.forget_waiting("C")  # a report of people waiting at C: every day it is weighed on
    assert standings.kept("102", NEXT_DAY, 0.0) == {"A"}
    reads.forget("Z")  # an office no service's offices hold: nothing to forget
    assert standings.kept("102", NEXT_DAY, 0.0) == {"A"}
    reads.forget_all()  # a recount
    assert standings.kept("101", NEXT_DAY, 0.0) == set()


def test_standings_whose_time_is_up_are_let_go_and_unsearched_tables_dropped() -> None:
    _, standings = _standings()
    _kept(standings, until=5.0)
    table = standings.of("101", DAY, LAYOUT, 0.0)
    table.put(0, STANDING, 50.0, "")
    assert standings.kept("101", DAY, 10.0) == {"A"}  # the others' time is up
    assert table.standings[1] is STANDING  # not yet swept
    later = standings.keep_seconds + 10.0
    assert standings.of("101", DAY, LAYOUT, later) is table  # searched again: swept
    assert table.standings == [STANDING, None, None] and table.until.tolist() == [50.0, 0.0, 0.0]
    assert standings.kept("102", NEXT_DAY, 0.0) == set()  # not searched since: dropped whole
    assert standings.of("102", NEXT_DAY, LAYOUT, later) is not table


def test_offices_that_moved_start_their_service_afresh_and_a_search_from_before_keeps_nothing() -> None:
    _, standings = _standings()
    _kept(standings)
    moved = layout()  # a later build of the service's offices
    table = standings.of("101", DAY, moved, 0.0)
    assert table.layout is moved and not table.until.any()
    assert standings.kept("101", DAY, 0.0) == set()
    assert standings.kept("102", DAY, 0.0) == {"A", "B", "C"}  # another service, its own offices
    table.put(0, STANDING, 100.0, "")
    stale = standings.of("101", DAY, LAYOUT, 0.0)  # a search that found its offices before the move
    assert stale is not table and stale.layout is LAYOUT
    assert standings.of("101", DAY, moved, 0.0) is table and standings.kept("101", DAY, 0.0) == {"A"}


def test_no_more_rows_than_the_bound_the_least_searched_going_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(standings_module, "MAX_ROWS", 12)
    _, standings = _standings()
    _kept(standings)  # twelve rows: three offices for two services on two days
    for day, service in ((DAY, "102"), (NEXT_DAY, "101"), (NEXT_DAY, "102")):
        standings.of(service, day, LAYOUT, 1.0)  # searched again since
    standings.of("103", DAY, LAYOUT, 2.0).put(0, STANDING, 100.0, "")  # three more: three must go
    assert standings.kept("103", DAY, 0.0) == {"A"}
    assert standings.kept("101", DAY, 0.0) == set()  # searched least lately: gone
    assert standings.kept("102", DAY, 0.0) == standings.kept("101", NEXT_DAY, 0.0) == {"A", "B", "C"}


def _table(*free_times: tuple[str, ...]) -> tuple[Table, list[Standing]]:
    table = Table(LAYOUT, 0.0)
    standings = [stand(status="active", seats=9, used=0, waiting=0, free_times=times) for times in free_times]
    for row, standing in enumerate(standings):
        table.put(row, standing, 1.0, "")
    return table, standings


def test_the_next_free_slot_is_looked_up_again_once_the_clock_passes_it() -> None:
    table, standings = _table(("08:00", "09:30", "11:00"), ("08:00",))
    rows, kept = np.array([0, 1]), np.array([True, True])

    def next_minutes(not_before: str) -> list[float]:
        return table.next_minutes(rows, standings, kept, not_before).tolist()

    assert next_minutes("") == [480, 480]  # another day: from the first
    assert next_minutes("07:59") == [480, 480]
    assert next_minutes("08:00") == [570, NO_FREE_SLOT]  # strictly after
    assert next_minutes("10:15") == [660, NO_FREE_SLOT]
    assert next_minutes("09:00") == [570, NO_FREE_SLOT]  # a search from a minute before
    assert table.next_minute.tolist()[:2] == [660, NO_FREE_SLOT]  # leaves the later one kept
    assert next_minutes("11:00") == [NO_FREE_SLOT, NO_FREE_SLOT]


def test_a_slot_looked_up_after_a_later_minute_is_looked_up_again_for_an_earlier_one() -> None:
    table, standings = _table(("10:30", "11:00"))
    table.put(0, standings[0], 1.0, "10:30")  # put by a search whose clock is at 10:30
    rows, kept = np.array([0]), np.array([True])
    assert table.next_minutes(rows, standings, kept, "10:29").tolist() == [630]  # not 11:00


def test_a_standing_the_table_does_not_keep_is_looked_up_for_its_search_alone() -> None:
    table, _ = _table(("09:00",))
    other = stand(status="active", seats=9, used=0, waiting=0, free_times=("12:00",))
    assert table.next_minutes(np.array([0]), [other], np.array([False]), "").tolist() == [720]
    assert table.next_minute[0] == 540  # the table's own standing's, untouched
