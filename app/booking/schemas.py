from __future__ import annotations

import msgspec


class BookingCreate(msgspec.Struct, forbid_unknown_fields=True):
    national_id: str
    office_code: str
    service_code: str
    date: str
    slot: str | None = None  # "HH:MM"; absent: the earliest free slot that day


class WaitlistJoin(msgspec.Struct, forbid_unknown_fields=True):
    national_id: str
    office_code: str
    service_code: str
    date: str


class BookingOut(msgspec.Struct):
    tracking_code: str
    status: str
    office_code: str
    office_name_fa: str
    service_code: str
    service_name_fa: str
    date: str
    slot: str
    when_fa: str
    national_id: str  # masked
    mobile: str  # masked
    channel: str
    created_at: str
    waitlist_position: int | None = None  # for a waitlisted booking: its place in line
