from __future__ import annotations

import msgspec


class ServiceOut(msgspec.Struct):
    code: str
    name_fa: str
    name_en: str
    agency_fa: str
    duration_minutes: int
    tariff_rials: int


class CityOut(msgspec.Struct):
    id: int
    name_fa: str
    name_en: str
    city_class: str
    province_fa: str
    province_en: str


class OpeningHours(msgspec.Struct):
    weekday: int  # 0 = Saturday … 6 = Friday
    weekday_fa: str
    hours: list[tuple[str, str]]


class OfficeSummary(msgspec.Struct):
    code: str
    name_fa: str
    kind: str
    status: str
    city: CityOut
    address_fa: str
    lat: float
    lon: float


class OfficeDetail(OfficeSummary, kw_only=True):
    services: list[ServiceOut]
    opening_hours: list[OpeningHours]


class OfficePage(msgspec.Struct):
    items: list[OfficeSummary]
    total: int
    limit: int
    offset: int


class SlotOut(msgspec.Struct):
    time: str
    seats: int
    free: int
    label_fa: str


class DaySlots(msgspec.Struct):
    office_code: str
    service_code: str
    date: str
    date_fa: str
    status: str
    slots: list[SlotOut]
