from __future__ import annotations

import msgspec

from app.console.schemas import MovedBooking


class CrowdCapIn(msgspec.Struct, forbid_unknown_fields=True):
    starts_on: str
    ends_on: str
    percent: int
    reason: str
    province_code: str | None = None  # None: the whole country


class ClosureIn(msgspec.Struct, forbid_unknown_fields=True):
    date: str
    reason: str
    province_code: str | None = None  # None: the whole country


class ClosureOut(msgspec.Struct):
    id: int
    date: str
    province_code: str | None
    reason: str
    created_by: str
    moved: list[MovedBooking] = []
