"""Reading the office registry: the catalogue, search, one office, and what booking needs of it."""

from __future__ import annotations

import re

import msgspec
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from app.capacity.models import CapacityTemplate
from app.capacity.plan import WeeklyTemplate, decode_template, opening_hours, pool_for
from app.errors import InvalidInput
from app.locale import (
    INVISIBLE_MARKS,
    MAX_ID,
    WEEKDAY_NAMES,
    ZWNJ,
    check_range,
    check_text,
    name_key,
    normalize_digits,
    normalize_text,
)
from app.offices.errors import OfficeNotFound, ServiceNotFound, ServiceNotOffered
from app.offices.models import City, Office, OfficeService, Province, Service
from app.offices.schemas import CityOut, OfficeDetail, OfficePage, OfficeSummary, OpeningHours, ServiceOut

MAX_PAGE = 100
MAX_NAME = 100  # longer than any province or city name, with room for a typo
_INVISIBLE = re.compile(f"[{INVISIBLE_MARKS}]")


class BookableOffice(msgspec.Struct, frozen=True):
    """What the booking path needs to know about an office and one of its services. (Its
    status is not here: the reserve script enforces the live one.)"""

    id: int
    code: str
    name_fa: str
    service_code: str
    service_name_fa: str
    pool: str


def normalize_code(value: str, field: str) -> str:
    code = normalize_digits(value)
    if not code.isascii():  # copied from right-to-left text, wrapped in marks nobody sees
        code = _INVISIBLE.sub("", code)
    code = code.strip()
    if not code or len(code) > 10 or not code.isascii() or not code.isalnum():
        raise InvalidInput(field, f"{field} is not a valid code.", detail_fa="کد واردشده معتبر نیست.")
    return code


def service_out(service: Service) -> ServiceOut:
    return ServiceOut(
        code=service.code,
        name_fa=service.name_fa,
        name_en=service.name_en,
        agency_fa=service.agency_fa,
        duration_minutes=service.duration_minutes,
        tariff_rials=service.tariff_rials,
    )


def city_out(city: City) -> CityOut:
    return CityOut(
        id=city.id,
        name_fa=city.name_fa,
        name_en=city.name_en,
        city_class=city.city_class.value,
        province_fa=city.province.name_fa,
        province_en=city.province.name_en,
    )


def office_summary(office: Office) -> OfficeSummary:
    return OfficeSummary(
        code=office.code,
        name_fa=office.name_fa,
        kind=office.kind.value,
        status=office.status.value,
        city=city_out(office.city),
        address_fa=office.address_fa,
        lat=office.lat,
        lon=office.lon,
    )


async def list_services(*, session: AsyncSession) -> list[ServiceOut]:
    services = await session.scalars(select(Service).order_by(Service.code))
    return [service_out(s) for s in services]


async def search_offices(
    *,
    session: AsyncSession,
    province: str | None = None,
    city: str | None = None,
    service: str | None = None,
    limit: int = 20,
    offset: int = 0,
) -> OfficePage:
    """Offices by province (code or name), city (id or Persian/English name) and service."""
    check_range(limit, "limit", minimum=1, maximum=MAX_PAGE)
    check_range(offset, "offset", minimum=0, maximum=MAX_ID)
    query = select(Office).join(City, Office.city_id == City.id).join(Province, City.province_id == Province.id)
    if province:
        query = query.where(in_province(province))
    if city:
        value = normalize_text(check_text(city, "city", max_length=MAX_NAME, label_fa="نام شهر"))
        match = named(value, City.name_fa, City.name_en)
        # [0-9] only, and short enough to be an id: "²".isdigit() is true and int() refuses it.
        if value.isascii() and value.isdecimal() and len(value) <= 9:
            match = match | (City.id == int(value))
        query = query.where(match)
    if service:
        code = normalize_code(service, "service")
        query = query.join(OfficeService, OfficeService.office_id == Office.id).where(
            OfficeService.service_code == code
        )
    total = await session.scalar(select(func.count()).select_from(query.subquery())) or 0
    offices = await session.scalars(query.order_by(Office.code).limit(limit).offset(offset))
    return OfficePage(items=[office_summary(o) for o in offices], total=total, limit=limit, offset=offset)


def in_province(province: str) -> ColumnElement[bool]:
    """A filter on ``Province``: the one named by code («۰۱») or Persian or English name, as typed."""
    value = normalize_text(check_text(province, "province", max_length=MAX_NAME, label_fa="نام استان"))
    return (Province.code == value) | named(value, Province.name_fa, Province.name_en)


def named(value: str, name_fa: InstrumentedAttribute[str], name_en: InstrumentedAttribute[str]) -> ColumnElement[bool]:
    """A filter on a place's Persian or English name as typed, spaces and ZWNJ aside (``name_key``),
    English in any case. The few thousand places are scanned, not looked up in an index."""
    key = name_key(value)
    return (_squashed(name_fa) == key) | (_squashed(func.lower(name_en)) == key.lower())


def _squashed(name: ColumnElement[str] | InstrumentedAttribute[str]) -> ColumnElement[str]:
    return func.replace(func.replace(name, " ", ""), ZWNJ, "")


async def get_office(*, session: AsyncSession, code: str) -> OfficeDetail:
    code = normalize_code(code, "office_code")
    office = await session.scalar(select(Office).where(Office.code == code))
    if office is None:
        raise OfficeNotFound()
    services = await session.scalars(
        select(Service)
        .join(OfficeService, OfficeService.service_code == Service.code)
        .where(OfficeService.office_id == office.id)
        .order_by(Service.code)
    )
    template = await _template(session, office.id)
    hours = [
        OpeningHours(weekday=day, weekday_fa=WEEKDAY_NAMES[day], hours=spans)
        for day, spans in opening_hours(template).items()
    ]
    summary = office_summary(office)
    return OfficeDetail(
        **msgspec.structs.asdict(summary),
        services=[service_out(s) for s in services],
        opening_hours=hours,
    )


async def _template(session: AsyncSession, office_id: int) -> WeeklyTemplate:
    raw = await session.scalar(select(CapacityTemplate.template).where(CapacityTemplate.office_id == office_id))
    return decode_template(raw) if raw else WeeklyTemplate(days={})


async def bookable_office(*, session: AsyncSession, office_code: str, service_code: str) -> BookableOffice:
    """The office and service a booking names, read from the record, or the error that says
    which is wrong. (The hot paths ask ``app.offices.directory`` first.)"""
    office_code = normalize_code(office_code, "office_code")
    service_code = normalize_code(service_code, "service_code")
    return await _bookable_office(session, office_code, service_code)


async def _bookable_office(session: AsyncSession, office_code: str, service_code: str) -> BookableOffice:
    row = (
        await session.execute(
            select(Office.id, Office.code, Office.name_fa, CapacityTemplate.template)
            .outerjoin(CapacityTemplate, CapacityTemplate.office_id == Office.id)
            .where(Office.code == office_code)
        )
    ).first()
    if row is None:
        raise OfficeNotFound()
    office_id, code, name_fa, template = row
    service = (
        await session.execute(
            select(Service.name_fa, OfficeService.office_id)
            .outerjoin(
                OfficeService,
                (OfficeService.service_code == Service.code) & (OfficeService.office_id == office_id),
            )
            .where(Service.code == service_code)
        )
    ).first()
    if service is None:
        raise ServiceNotFound()
    if service.office_id is None:
        raise ServiceNotOffered()
    pool = pool_for(decode_template(template), service_code) if template else "*"
    return BookableOffice(
        id=office_id,
        code=code,
        name_fa=name_fa,
        service_code=service_code,
        service_name_fa=service.name_fa,
        pool=pool,
    )
