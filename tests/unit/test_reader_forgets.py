"""What an instance's copy of the counters forgets when an office changes on every day
(app.capacity.reading.DayReader): told of thousands at once (a province's crowd cap), it
forgets them in one pass over its memory."""

from __future__ import annotations

import datetime as dt

from app.capacity.reading import DayReader

DAYS = [dt.date(2026, 12, 8) + dt.timedelta(days=i) for i in range(3)]


def filled(codes: list[str]) -> DayReader:
    reader = DayReader(None, ttl=1.0)  # type: ignore[arg-type]  # no trip to Redis here
    for code in codes:
        reader._waiting[code] = (0.0, 1)
        for day in DAYS:
            reader._days[(code, day)] = (0.0, None)  # type: ignore[assignment]
            reader._sums[(code, day)] = (0.0, None)  # type: ignore[assignment]
    return reader


def test_told_changes_forget_each_office_changed_and_no_other() -> None:
    reader = filled(["000001", "000002", "000003"])
    heard: list[tuple[str | None, dt.date | None]] = []
    reader.on_forget(lambda code, day: heard.append((code, day)))
    reader._reading[("000002", DAYS[0])] = 1  # a read on its way: it must not be kept
    reader._forget_told(["000002|", f"000003|{DAYS[1].isoformat()}"])
    assert {key for key in reader._days} == {
        ("000001", DAYS[0]),
        ("000001", DAYS[1]),
        ("000001", DAYS[2]),
        ("000003", DAYS[0]),
        ("000003", DAYS[2]),
    }
    assert reader._sums.keys() == reader._days.keys()
    assert set(reader._waiting) == {"000001", "000003"}  # a day's change keeps the office's report
    assert ("000002", DAYS[0]) in reader._overtaken
    assert sorted(heard, key=str) == sorted([("000002", None), ("000003", DAYS[1])], key=str)
