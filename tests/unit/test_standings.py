"""The standings kept between searches (app.load.standings): forgotten with the counters they
came from, and swept once their time is up."""

from __future__ import annotations

import datetime as dt
from typing import cast

from app.capacity.reading import DayReader
from app.load.ranking import stand
from app.load.standings import Standings
from app.redis import AutoPipeline

DAY, NEXT_DAY = dt.date(2030, 2, 7), dt.date(2030, 2, 8)
STANDING = stand(status="active", seats=4, used=1, waiting=0, free_times=("08:00",))


def _kept(standings: Standings, until: float = 100.0) -> None:
    for day in (DAY, NEXT_DAY):
        for service in ("101", "102"):
            standings.of(service, day, 0.0).update({code: (until, STANDING) for code in ("A", "B", "C")})


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
    standings.of("101", DAY, 0.0)["D"] = (50.0, STANDING)
    standings.of("101", DAY, standings.keep + 10.0)  # a search once a sweep is due
    assert _offices(standings, "101", DAY) == ["D"]  # swept: the one whose time is not up
    assert _offices(standings, "102", NEXT_DAY) == []  # not searched since: dropped whole
