"""The load test's clock: early morning of a working day in the service's zone (loadtests.stack)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from app.capacity.plan import iranian_weekday
from loadtests.stack import morning_timezone

SATURDAY, THURSDAY, FRIDAY = 0, 5, 6


def local(now: dt.datetime) -> dt.datetime:
    return now.astimezone(ZoneInfo(morning_timezone(now)))


@pytest.mark.parametrize("hour", range(24))
def test_every_hour_of_a_week_gets_an_early_morning(hour: int) -> None:
    for day in range(7):
        now = dt.datetime(2026, 12, 5 + day, hour, 30, tzinfo=dt.UTC)
        assert 1 <= local(now).hour < 8


def test_a_friday_morning_is_passed_over_for_saturday() -> None:
    # 16:49 UTC on a Friday: UTC-10 is Friday 06:49, UTC+14 Saturday 06:49.
    now = dt.datetime(2026, 12, 4, 16, 49, tzinfo=dt.UTC)
    assert iranian_weekday(now.date()) == FRIDAY
    assert morning_timezone(now) == "Etc/GMT-14"
    assert iranian_weekday(local(now).date()) == SATURDAY


def test_a_thursday_is_taken_only_when_no_full_day_is_in_reach() -> None:
    # 20:00 UTC on a Wednesday: Wednesday morning is gone everywhere; Thursday 06:00 at UTC+10.
    now = dt.datetime(2026, 12, 9, 20, 0, tzinfo=dt.UTC)
    assert iranian_weekday(local(now).date()) == THURSDAY


def test_a_friday_only_when_no_zone_has_reached_saturday() -> None:
    # Thursday 20:00 UTC to Friday 11:00 UTC every morning within reach is a Friday's.
    start = dt.datetime(2026, 12, 5, 0, 0, tzinfo=dt.UTC)
    fridays = [
        now
        for now in (start + dt.timedelta(minutes=30 * i) for i in range(7 * 48))
        if iranian_weekday(local(now).date()) == FRIDAY
    ]
    assert fridays[0] == dt.datetime(2026, 12, 10, 20, 0, tzinfo=dt.UTC)
    assert fridays[-1] == dt.datetime(2026, 12, 11, 10, 30, tzinfo=dt.UTC)
    assert len(fridays) == 30
