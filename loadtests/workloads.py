"""What the load is made of: the national network as the record has it, and request files for wrk.

Locust's citizens sign in like people do; wrk cannot (it has no SMS inbox), so its bookings
carry tokens minted up front with the service's own ``NOBAT_SECRET_KEY`` and
``CitizenAuth.issue_token``, and national IDs from ``app.identity.generate_national_id``,
every one distinct, and each phone books no more than it may, so that no request is
refused for the citizen's limits or the phone's.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from sqlalchemy import select

from app.auth.service import CitizenAuth
from app.booking.models import Booking
from app.capacity import keys
from app.db import create_engine, session_factory
from app.identity import generate_national_id
from app.offices.models import City, Office, OfficeService
from app.ratelimit import RateLimiter
from app.settings import Settings, load_settings, parse_limit

# The services most offices offer (see app/offices/catalogue.py): the bulk of real demand.
COMMON_SERVICES = ("101", "102", "104", "110", "115")


@dataclass(frozen=True)
class OfficeInfo:
    code: str
    lat: float
    lon: float
    city_fa: str
    services: tuple[str, ...]


@dataclass
class Network:
    offices: list[OfficeInfo]
    cities: list[tuple[str, float, float]]  # (name_fa, lat, lon)
    by_code: dict[str, OfficeInfo] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_code = {office.code: office for office in self.offices}

    def first_offices(self) -> list[str]:
        """The first office of each province: the ones with demo staff accounts (app/staff/demo.py)."""
        firsts: dict[str, str] = {}
        for office in self.offices:
            province = office.code[:2]
            firsts[province] = min(firsts.get(province, office.code), office.code)
        return sorted(firsts.values())


async def load_network(database_url: str) -> Network:
    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as session:
            services: dict[int, list[str]] = {}
            for office_id, service_code in await session.execute(
                select(OfficeService.office_id, OfficeService.service_code)
            ):
                services.setdefault(office_id, []).append(service_code)
            rows = await session.execute(
                select(Office.id, Office.code, Office.lat, Office.lon, City.name_fa)
                .join(City, City.id == Office.city_id)
                .order_by(Office.code)
            )
            offices = [
                OfficeInfo(code=code, lat=lat, lon=lon, city_fa=city, services=tuple(sorted(services.get(oid, []))))
                for oid, code, lat, lon, city in rows
            ]
            cities = [
                (name, lat, lon) for name, lat, lon in await session.execute(select(City.name_fa, City.lat, City.lon))
            ]
        return Network(offices=offices, cities=cities)
    finally:
        await engine.dispose()


async def not_in_record(database_url: str, tracking_codes: list[str]) -> list[str]:
    """Of these tracking codes (bookings the service confirmed), those the record lacks."""
    engine = create_engine(database_url)
    try:
        found: set[str] = set()
        async with session_factory(engine)() as session:
            for start in range(0, len(tracking_codes), 5000):
                chunk = tracking_codes[start : start + 5000]
                found.update(
                    await session.scalars(select(Booking.tracking_code).where(Booking.tracking_code.in_(chunk)))
                )
        return sorted(set(tracking_codes) - found)
    finally:
        await engine.dispose()


def open_office_days(redis: Redis, candidates: list[tuple[str, dt.date]]) -> list[tuple[str, dt.date]]:
    """The (office, day) pairs that have slots in Redis (not a Friday, a holiday or a closure)."""
    with redis.pipeline(transaction=False) as pipe:
        for code, day in candidates:
            pipe.hlen(keys.office_day(code, day))
        lengths = pipe.execute()
    # A day hash always has _status, _cap and _count (app.capacity.service._day_args);
    # anything more is a slot.
    return [pair for pair, length in zip(candidates, lengths, strict=True) if length > 3]


def open_days(redis: Redis, code: str, first: dt.date, days: int) -> list[dt.date]:
    """The days from ``first`` on which the office has slots."""
    candidates = [(code, first + dt.timedelta(days=i)) for i in range(days)]
    return [day for _, day in open_office_days(redis, candidates)]


def first_open_day(redis: Redis, code: str, today: dt.date) -> dt.date:
    """Today, or the next day the office opens (today again when none is counted)."""
    return next(iter(open_days(redis, code, today, 14)), today)


def phones(secret_key: str, rng: random.Random) -> Iterator[str]:
    """Bearer tokens of phones, none given twice, each signed with the service's key by the
    service's own code."""
    settings = load_settings({}).with_(secret_key=secret_key)
    lazy = AsyncRedis()  # never connected: issuing a token only signs claims
    auth = CitizenAuth(redis=lazy, settings=settings, limiter=RateLimiter(lazy), messenger=None)  # type: ignore[arg-type]
    given: set[str] = set()
    while True:
        # 0935: not the Locust citizens' 0912 (loadtests.locustfile), whose phones have
        # bookings of their own by the time wrk books.
        mobile = f"0935{rng.randrange(10**7):07d}"
        if mobile not in given:
            given.add(mobile)
            yield auth.issue_token(mobile)


SERVICE_LIMITS = ("NOBAT_BOOKINGS_PER_MOBILE", "NOBAT_MAX_ACTIVE_BOOKINGS", "NOBAT_HORIZON_DAYS")


def service_settings() -> Settings:
    """The limits and horizon of the service under test, which inherits this environment: what
    the load books and the check after it counts against."""
    return load_settings({name: os.environ[name] for name in SERVICE_LIMITS if os.environ.get(name)})


def national_ids(rng: random.Random, *, exclude: set[str]) -> Iterator[str]:
    """Valid national IDs, never the same twice (nor one in ``exclude``)."""
    while True:
        nid = generate_national_id(rng)
        if nid not in exclude:
            exclude.add(nid)
            yield nid


Line = tuple[str, str, str, str, str, str]
"""One request for loadtests/wrk/requests.lua: method, path, token, Idempotency-Key, body, client address."""


class Addresses:
    """Client addresses for X-Forwarded-For (the service trusts it in a load test, as behind its
    own proxy): citizens come from many carrier addresses, so the per-address limits (API,
    sign-in) bite per address as they would in the field, not on the one 127.0.0.1."""

    def __init__(self, rng: random.Random, count: int = 20_000) -> None:
        self.pool = [f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}" for _ in range(count)]
        self.rng = rng

    def pick(self) -> str:
        return self.rng.choice(self.pool)


def write_requests(path: Path, lines: Iterable[Line]) -> int:
    """Write request lines for loadtests/wrk/requests.lua."""
    count = 0
    with path.open("w") as out:
        for line in lines:
            if any("\t" in part or "\n" in part for part in line):
                raise ValueError(f"a field holds a tab or a newline: {line!r}")
            out.write("\t".join(line) + "\n")
            count += 1
    return count


def booking_lines(
    *,
    count: int,
    pairs: list[tuple[str, dt.date]],
    network: Network,
    phones: Iterator[str],
    ids: Iterator[str],
    rng: random.Random,
    addresses: Addresses,
    service: str | None = None,
    tag: str,
) -> Iterator[Line]:
    """POST /api/v1/bookings for the earliest free slot at (office, day) pairs drawn from
    ``pairs``, each from a phone of ``phones`` that makes no more than it may."""
    # Each phone books no more than it may, as a family's does: no booking is refused for it.
    per_phone = parse_limit(service_settings().bookings_per_mobile)[0]
    token = ""
    for number in range(count):
        code, day = pairs[number % len(pairs)] if len(pairs) == 1 else rng.choice(pairs)
        office = network.by_code[code]
        wanted = service or rng.choice([s for s in office.services if s in COMMON_SERVICES] or list(office.services))
        if number % per_phone == 0:
            token = next(phones)
        body = {"national_id": next(ids), "office_code": code, "service_code": wanted, "date": day.isoformat()}
        payload = json.dumps(body, separators=(",", ":"))
        yield ("POST", "/api/v1/bookings", token, f"{tag}-{number}", payload, addresses.pick())


def slots_lines(
    *, count: int, pairs: list[tuple[str, dt.date]], network: Network, rng: random.Random, addresses: Addresses
) -> Iterator[Line]:
    for _ in range(count):
        code, day = rng.choice(pairs)
        office = network.by_code[code]
        wanted = rng.choice([s for s in office.services if s in COMMON_SERVICES] or list(office.services))
        path = f"/api/v1/offices/{code}/slots?service={wanted}&date={day.isoformat()}"
        yield ("GET", path, "", "", "", addresses.pick())


def nearby_lines(
    *,
    count: int,
    network: Network,
    rng: random.Random,
    addresses: Addresses,
    day: dt.date,
    points: list[tuple[float, float]] | None = None,
) -> Iterator[Line]:
    """Searches for ``day`` from random points near random cities (or near ``points``: a crowd
    around a few hot offices), as phones would send them."""
    centres = points or [(lat, lon) for _, lat, lon in network.cities]
    for _ in range(count):
        lat, lon = rng.choice(centres)
        lat += rng.uniform(-0.05, 0.05)
        lon += rng.uniform(-0.05, 0.05)
        wanted = rng.choice(COMMON_SERVICES)
        path = f"/api/v1/offices/nearby?service={wanted}&lat={lat:.5f}&lon={lon:.5f}&date={day.isoformat()}"
        yield ("GET", path, "", "", "", addresses.pick())


def reserve_lines(*, count: int, offices: list[str], day: dt.date, rng: random.Random, tag: str) -> Iterator[Line]:
    """POST /reserve on the bare endpoint (loadtests/bare_reserve.py), earliest free slot."""
    for number in range(count):
        body = {"office_code": rng.choice(offices), "date": day.isoformat()}
        yield ("POST", "/reserve", "", f"{tag}-{number}", json.dumps(body, separators=(",", ":")), "")


def pg_lines(*, count: int, slot_ids: list[int], ids: Iterator[str], rng: random.Random) -> Iterator[Line]:
    """POST /book on the PostgreSQL row-lock baseline (loadtests/pg_baseline.py)."""
    for _ in range(count):
        body = {"slot_id": rng.choice(slot_ids), "national_id": next(ids)}
        yield ("POST", "/book", "", "", json.dumps(body, separators=(",", ":")), "")
