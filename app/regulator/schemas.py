from __future__ import annotations

import msgspec

from app.console.schemas import MovedBooking


class CrowdCapIn(msgspec.Struct, forbid_unknown_fields=True):
    starts_on: str
    ends_on: str
    percent: int
    reason: str
    # Required, and null for the whole country: a client that left the field out had closed
    # or capped every office in Iran, and the texts sent to the moved cannot be taken back.
    province_code: str | None


class ClosureIn(msgspec.Struct, forbid_unknown_fields=True):
    date: str
    reason: str
    province_code: str | None  # required, null for the whole country (as CrowdCapIn's)


class ClosureOut(msgspec.Struct):
    id: int
    date: str
    province_code: str | None
    reason: str
    created_by: str
    moved: list[MovedBooking] = []
    # In the answer to a closure: true when its request did not move every booking itself (a
    # recount began, Redis or the record was away, another was moving that day's), so that
    # ``moved`` is not the whole of it and the minute's job moves the rest.
    moves_pending: bool = False
