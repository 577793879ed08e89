"""The zones come from the pinned tzdata package, whatever the host has (app/__init__.py)."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import tzdata

import app  # noqa: F401  (importing it sets where zones are read from)


def test_zones_are_read_from_the_pinned_package_not_the_host() -> None:
    assert zoneinfo.TZPATH == ()
    assert tzdata.IANA_VERSION >= "2022b"  # Iran stopped moving its clocks in 2022b's data


def test_tehran_keeps_one_offset_all_year() -> None:
    tehran = zoneinfo.ZoneInfo("Asia/Tehran")
    offsets = {dt.datetime(2027, month, 15, 12, tzinfo=tehran).utcoffset() for month in range(1, 13)}
    assert offsets == {dt.timedelta(hours=3, minutes=30)}
