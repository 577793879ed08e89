"""The standings kept between searches (app.load.standings): forgotten with the counters they
came from, dropped with the searches, bounded, and each office's next free slot looked up
again once the clock passes it."""

from __future__ import annotations

import datetime as dt
from typing import cast

import numpy as np
import pytest

from app.capacity.reading import DayReader
from app.load import standings as standings_module
from app.load.ranking import NO_FREE_SLOT, stand
from app.load.standings import Standings
from app.offices.nearest import Layout, place
from app.redis import AutoPipeline

DAY, NEXT_DAY = dt.date(2030, 2, 7), dt.date(2030, 2, 8)
STANDING = stand(status="active", seats=4, used=1, waiting=0, free_times=("08:00",))
LAYOUT = Layout([place(code, 35.7, 51.4 + i / 100) for i, code in enumerate("ABC")])


def _standings() -> tuple[DayReader, Standings]:
    reads = DayReader(cast(AutoPipeline, None), ttl=1.0)  # forgetting asks Redis nothing
    return reads, Standings(reads)


def _kept(standings: Standings, until: float = 100.0) -> None:
    for day in (DAY, NEXT_DAY):
        for service in ("101", "102"):
            table = standings.of(service, day, LAYOUT, 0.0)
            for row in range(3):
                table.put(row, STANDING, until, "")


def test_what_the_counters_forget_the_standings_forget() -> None:
    reads, standings = _standings()
    _kept(standings)
    reads.forget("A", DAY)  # a booking at A that day
    assert standings.kept("101", DAY, 0.0) == standings.kept("102", DAY, 0.0) == {"B", "C"}
    assert standings.kept("101", NEXT_DAY, 0.0) == {"A", "B", "C"}
    reads.forget("B")  # every day of B (its template changed)
    reads.forget_waiting("C")  # a report of people waiting at C: every day it is weighed on
    assert standings.kept("102", NEXT_DAY, 0.0) == {"A"}
    reads.forget_all()  # a recount
    assert standings.kept("101", NEXT_DAY, 0.0) == set()
    reads.forget("Z")  # an office no service's offices hold: nothing to forget
    assert standings.kept("101", DAY, 0.0) == set()


def test_standings_whose_time_is_up_stand_no_more_and_unsearched_tables_go() -> None:
    _, standings = _standings()
    _kept(standings, until=5.0)
    standings.of("101", DAY, LAYOUT, 0.0).put(0, STANDING, 50.0, "")
    assert standings.kept("101", DAY, 10.0) == {"A"}  # the others' time is up
    later = standings.keep_seconds + 10.0
    assert standings.of("101", DAY, LAYOUT, later).until[0] == 50.0  # a search: kept
    assert standings.kept("102", NEXT_DAY, 0.0) == set()  # not searched since: dropped whole


def test_offices_that_moved_start_their_service_afresh() -> None:
    _, standings = _standings()
    _kept(standings)
    moved = Layout([place("A", 35.8, 51.4), place("B", 35.7, 51.41), place("C", 35.7, 51.42)])
    table = standings.of("101", DAY, moved, 0.0)
    assert table.layout is moved and not table.until.any()
    assert standings.kept("101", DAY, 0.0) == set()
    assert standings.kept("102", DAY, 0.0) == {"A", "B", "C"}  # another service, its own offices


def test_no_more_rows_are_kept_than_the_bound_and_what_goes_makes_room(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(standings_module, "MAX_ROWS", 12)
    _, standings = _standings()
    _kept(standings)  # twelve: three offices for two services on two days
    table = standings.of("103", DAY, LAYOUT, 0.0)
    table.put(0, STANDING, 100.0, "")
    assert table.until[0] == 100.0  # its search uses it,
    assert standings.kept("103", DAY, 0.0) == set()  # but it is not kept
    standings.of("101", DAY, LAYOUT, standings.keep_seconds)  # the others unsearched since: gone
    standings.of("103", DAY, LAYOUT, standings.keep_seconds).put(0, STANDING, 100.0, "")
    assert standings.kept("103", DAY, 0.0) == {"A"}


def test_the_next_free_slot_is_looked_up_again_once_the_clock_passes_it() -> None:
    _, standings = _standings()
    table = standings.of("101", DAY, LAYOUT, 0.0)
    table.put(0, stand(status="active", seats=9, used=0, waiting=0, free_times=("08:00", "09:30", "11:00")), 1.0, "")
    table.put(1, stand(status="active", seats=9, used=0, waiting=0, free_times=("08:00",)), 1.0, "")
    rows = np.array([0, 1])
    assert table.next_minutes(rows, "").tolist() == [480, 480]  # another day: from the first
    assert table.next_minutes(rows, "07:59").tolist() == [480, 480]
    assert table.next_minutes(rows, "08:00").tolist() == [570, NO_FREE_SLOT]  # strictly after
    assert table.next_minutes(rows, "10:15").tolist() == [660, NO_FREE_SLOT]
    assert table.next_minutes(rows, "09:00").tolist() == [570, NO_FREE_SLOT]  # the clock went back
    assert table.next_minutes(rows, "11:00").tolist() == [NO_FREE_SLOT, NO_FREE_SLOT]
