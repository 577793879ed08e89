from __future__ import annotations

import datetime as dt
import gc
import time

import pytest

from app.capacity import reading
from app.capacity.reading import CountedDay, DaySums, PoolDay, _drop_expired, waiting_report


def test_a_day_hash_parses_into_pools_in_time_order() -> None:
    day = CountedDay(
        {
            "_status": "restricted",
            "_cap": "50",
            "s|*|09:00": "2",
            "s|*|08:30": "3",
            "u|*|08:30": "1",
            "s|101|10:00": "1",
        }
    )
    assert (day.status, day.cap) == ("restricted", 50)
    assert day.pools == {"*": (("08:30", "09:00"), (3, 2), (1, 0)), "101": (("10:00",), (1,), (0,))}


def test_a_pools_sums_count_every_slot_and_list_the_free_ones_in_order() -> None:
    day = DaySums(
        {
            "_cap": "50",  # a cap is the reader's to apply (day_room), not the totals'
            "s|*|09:00": "2",
            "u|*|09:00": "2",
            "s|*|08:30": "3",
            "u|*|08:30": "1",
            "s|*|10:00": "1",
            "s|*|11:00": "1",
            "u|*|11:00": "3",  # over-full (a same-day cut): full, taking none of the others' seats
            "s|101|10:00": "1",
            "u|101|10:00": "1",
        }
    )
    assert (day.status, day.cap) == ("active", 50)
    assert day.of("*") == PoolDay(7, 6, 6, 3, ("08:30", "10:00"), "08:30")
    assert day.of("101") == PoolDay(1, 1, 1, 0, (), "10:00")
    assert day.of("102") == PoolDay(0, 0, 0, 0, (), None)  # no slot of that pool
    assert DaySums({}).of("*") == PoolDay(0, 0, 0, 0, (), None)
    assert (DaySums({}).status, DaySums({}).cap) == ("active", 100)


def test_today_the_slots_begun_are_past_but_the_day_still_counts_for_its_cap() -> None:
    """At 09:10 the empty 08:30 slot is no free seat and no lighter load; the day's own sums
    (what its cap bounds) still count it. The sums change when the 10:00 slot begins."""
    day = DaySums({"s|*|08:30": "3", "s|*|09:00": "2", "u|*|09:00": "2", "s|*|10:00": "4", "u|*|10:00": "1"})
    assert day.of("*", "09:10") == PoolDay(9, 3, 1, 3, ("10:00",), "10:00")
    assert day.of("*", "10:00") == PoolDay(9, 3, 0, 0, (), None)  # begun at 10:00:00: the day is over
    assert day.of("*", "08:29") == day.of("*")
    # A closed day keeps its booked slots' fields at no seats: nothing planned, however full.
    assert DaySums({"s|*|08:30": "0", "u|*|08:30": "2"}).of("*").planned == 0


def test_an_empty_hash_is_an_active_day_without_slots() -> None:
    day = CountedDay({})
    assert (day.status, day.cap, day.pools) == ("active", 100, {})


def test_the_memory_keeps_only_unexpired_entries_and_never_grows_past_its_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reading, "MAX_ENTRIES", 4)
    now = time.monotonic()
    entries = {"old": (now - 1, 1), "new": (now + 10, 2)}
    _drop_expired(entries)
    assert entries == {"new": (now + 10, 2)}
    full = {n: (now + 10, n) for n in range(5)}
    _drop_expired(full)
    assert list(full) == [2, 3, 4]  # all fresh and past the bound: the oldest go, to 3/4 of it


def test_a_day_kept_for_readers_soon_leaves_the_collector_nothing_but_itself_to_track() -> None:
    """Thousands of days are kept (app.capacity.reading); slots held as lists of tuples made the
    collector's passes look through every one of them, stopping a worker for 40-75 ms."""
    fields = {"_status": "active", "_cap": "100", "s|*|08:00": "2", "u|*|08:00": "1", "s|101|09:00": "1"}
    day, summed = CountedDay(fields), DaySums(fields)
    gc.collect()
    gc.collect()
    assert not gc.is_tracked(day.pools)
    assert not any(gc.is_tracked(columns) for columns in day.pools.values())
    assert not gc.is_tracked(summed.pools)
    assert not any(gc.is_tracked(columns) for columns in summed.pools.values())


def test_a_waiting_report_counts_for_two_hours_and_a_bad_one_not_at_all() -> None:
    now = dt.datetime(2026, 12, 3, 10, 0, tzinfo=dt.UTC)
    fresh = (now - dt.timedelta(minutes=119)).isoformat()
    assert waiting_report(f"12|{fresh}", now) == (12, fresh)
    assert waiting_report(f"12|{(now - dt.timedelta(minutes=121)).isoformat()}", now) == (0, None)
    assert waiting_report(None, now) == (0, None)
    assert waiting_report("12|yesterday", now) == (0, None)
