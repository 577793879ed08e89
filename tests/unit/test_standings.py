"""The standings kept between searches (app.load.standings): forgotten with the counters they
came from, and swept once their time is up."""

from __future__ import annotations

import datetime as dt
from typing import cast

import pytest

from app.capacity.reading import DayReader
from app.load import standings as standings_module
from app.load.ranking import stand
from app.load.standings import Standings
from app.redis import AutoPipeline

DAY, NEXT_DAY = dt.date(2030, 2, 7), dt.date(2030, 2, 8)
STANDING = stand(status="active", seats=4, used=1, waiting=0, free_times=("08:00",), open=True)


def _kept(standings: Standings, until: float = 100.0) -> None:
    for day in (DAY, NEXT_DAY):
        for service in ("101", "102"):
            kept = standings.of(service, day, 0.0)
            for code in ("A", "B", "C"):
                standings.keep(kept, code, until, STANDING)


def _offices(standings: Standings, service: str, day: dt.date) -> list[str]:
    return sorted(standings.of(service, day, 0.0))


def test_what_the_counters_forget_the_standings_forget() -> None:
    reads = DayReader(cast(AutoPipeline, None), ttl=1.0)  # forgetting asks Redis nothing
    standings = Standings(reads)
    _kept(standings)
    reads.forget("A", DAY)  # a booking at A that day
    assert _offices(standings, "101", DAY) == _offices(standings, "102", DAY) == ["B", "C"]
    assert _offices(standings, "101", NEXT_DAY) == ["A", "B", "C"]
    reads.forget("B")  # every day of B (its template changed)
    reads.forget_waiting("C")  # a report of people waiting at C: every day it is weighed on
    assert _offices(standings, "102", NEXT_DAY) == ["A"]
    reads.forget_all()  # a recount
    assert _offices(standings, "101", NEXT_DAY) == []


def test_standings_whose_time_is_up_are_swept() -> None:
    standings = Standings(DayReader(cast(AutoPipeline, None), ttl=1.0))
    _kept(standings, until=5.0)
    standings.keep(standings.of("101", DAY, 0.0), "D", 50.0, STANDING)
    standings.of("101", DAY, standings.keep_seconds + 10.0)  # a search once a sweep is due
    assert _offices(standings, "101", DAY) == ["D"]  # swept: the one whose time is not up
    assert _offices(standings, "102", NEXT_DAY) == []  # not searched since: dropped whole


def test_no_more_are_kept_than_the_bound_and_what_goes_makes_room(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(standings_module, "MAX_KEPT", 12)
    reads = DayReader(cast(AutoPipeline, None), ttl=1.0)
    standings = Standings(reads)
    _kept(standings)  # twelve: A, B and C for two services on two days
    kept = standings.of("103", DAY, 0.0)
    standings.keep(kept, "D", 100.0, STANDING)
    assert "D" not in kept  # at the bound: used by its search, not kept
    standings.keep(standings.of("101", DAY, 0.0), "A", 200.0, STANDING)  # kept again: no new room needed
    reads.forget("A", DAY)  # two go
    standings.keep(kept, "D", 100.0, STANDING)
    standings.keep(kept, "E", 100.0, STANDING)
    standings.keep(kept, "F", 100.0, STANDING)
    assert sorted(kept) == ["D", "E"]
    reads.forget_all()
    standings.keep(kept, "F", 100.0, STANDING)
    assert sorted(kept) == ["F"]
