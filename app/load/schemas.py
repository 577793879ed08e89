from __future__ import annotations

import msgspec


class NearbyOffice(msgspec.Struct):
    code: str
    name_fa: str
    address_fa: str
    city_fa: str
    lat: float
    lon: float
    status: str  # active or restricted (blocked offices never appear)
    restricted: bool
    open: bool  # false: it takes nobody for the service that day (a day off, a closure)
    distance_km: float
    seats_free: int
    load: float  # share of the day's seats already taken, 0..1
    busyness: str  # low, medium, high
    busyness_fa: str
    waiting_now: int
    next_free_slot: str | None
    next_free_slot_fa: str | None
    score: float


class NearbyResult(msgspec.Struct):
    service_code: str
    date: str
    date_fa: str
    origin_lat: float
    origin_lon: float
    offices: list[NearbyOffice]


class HourLoad(msgspec.Struct):
    hour: str  # "09:00"
    seats: int
    used: int
    load: float


class OfficeLoad(msgspec.Struct):
    office_code: str
    date: str
    date_fa: str
    status: str
    seats: int
    used: int
    load: float
    busyness: str
    busyness_fa: str
    waiting_now: int
    waiting_reported_at: str | None
    hours: list[HourLoad]
