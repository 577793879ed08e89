"""Every office's booking facts in memory, so a booking, a slots read or a nearby search
asks SQL nothing.

A booking needs of the registry only what rarely changes: the office's id and Persian name,
whether it offers the service, the service's Persian name and which seat pool the service
draws from (its weekly template says); a nearby search, where the offices offering a service
are (app.offices.nearest). All of it, for the 17,000 offices, is about 50 MB (the nearby
grids most of it), so each app instance loads it whole at start.

Freshness: whoever changes one of those facts calls ``changed`` in the same process (the
entry is dropped at once) and bumps a version in Redis, logging which office it changed;
every other instance looks at that version at most once a ``check_every`` seconds and, in
the background, reads again the offices changed since its copy (everything, when the log
cannot say, or after a rebuild), serving the old copy meanwhile. An office or service the
copy does not know is looked up in SQL (and remembered when found), so a new office is
bookable at once; nearby searches find it after the rebuild that follows its import.
Staleness is harmless for correctness: an office's status and seats are enforced in Redis
by the reserve script, and a pool that no longer exists is refused there, never overbooked.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.capacity import keys
from app.capacity.models import CapacityTemplate
from app.capacity.plan import SHARED_POOL, decode_template, pool_for
from app.capacity.scripts import as_text
from app.offices.models import City, Office, OfficeService, Service
from app.offices.nearest import Entry, GeoIndex, place
from app.offices.schemas import ServiceOut
from app.offices.service import BookableOffice, bookable_office, list_services, normalize_code, service_out

log = logging.getLogger(__name__)


class OfficeCard(msgspec.Struct, frozen=True):
    """What a list of offices shows of each (the nearby search)."""

    name_fa: str
    address_fa: str
    city_fa: str
    lat: float
    lon: float


# What a card shows, read in the same order by the load and by the fallback for offices the
# copy does not hold.
_CARD_COLUMNS = (Office.name_fa, Office.address_fa, City.name_fa, Office.lat, Office.lon)


def _card(row: Sequence[Any]) -> OfficeCard:
    name, address, city, lat, lon = row
    return OfficeCard(name_fa=name, address_fa=address, city_fa=city, lat=lat, lon=lon)


Version = tuple[str | None, int]
"""(epoch, number) of the directory: keys.DIRECTORY_EPOCH and keys.DIRECTORY_VERSION, (None, 0)
before any change."""

UNKNOWN: Version = (None, -1)
"""The version of a copy read while Redis was away: never the current one."""


@dataclass
class _Office:
    id: int
    code: str
    name_fa: str
    template: str | None
    services: set[str]
    card: OfficeCard | None = None
    place: Entry | None = None  # where the nearby search finds it (app.offices.nearest)
    # Per service: from the template (``_pool_of``), or as a booking found it for an office
    # whose template this copy does not hold (``_remember``).
    pools: dict[str, str] = field(default_factory=dict)

    def pool(self, service_code: str) -> str:
        if service_code not in self.pools:
            self.pools[service_code] = _pool_of(self.template, service_code) if self.template else "*"
        return self.pools[service_code]


@lru_cache(maxsize=4096)
def _pool_of(template: str, service_code: str) -> str:
    """``pool_for`` a template as the record keeps it: offices share a few templates, and a
    nearby search asks for thirty offices' pools, so each is decoded once, not once per office."""
    return pool_for(decode_template(template), service_code)


class OfficeDirectory:
    def __init__(self, *, sessions: async_sessionmaker[AsyncSession], redis: Redis, check_every: float = 1.0) -> None:
        self.sessions = sessions
        self.redis = redis
        self.check_every = check_every
        self._offices: dict[str, _Office] = {}
        self._services: dict[str, ServiceOut] = {}  # the catalogue, by code
        self._near: dict[str, GeoIndex] = {}  # by service: the offices that offer it, by position
        self._version: Version = (None, 0)
        self._checked_at = 0.0
        self._reloading: asyncio.Task[None] | None = None
        self._unannounced: set[str] = set()  # changed here, not yet told to the others
        self._reading_again: list[Callable[[str | None], None]] = []
        self._loaded = False
        self._first_load = asyncio.Lock()

    def on_read_again(self, listener: Callable[[str | None], None]) -> None:
        """Have ``listener`` called with each office this copy reads again or drops (None: all
        of them), once the new one is in: what was worked out from the old one is stale."""
        self._reading_again.append(listener)

    async def load(self) -> None:
        """Read the whole registry (about a second for the national network). Redis away (an
        instance started during its failover) does not stop it: the copy is read whole again
        at the first look Redis answers, as its version is then unknown."""
        try:
            version = await self._current_version()
        except RedisError:
            version = UNKNOWN
        async with self.sessions() as session:
            catalogue, offices = await _read(session)
        near = {service_code: GeoIndex(places) for service_code, places in _places(offices).items()}
        self._offices, self._services, self._near, self._version = offices, catalogue, near, version
        self._checked_at = time.monotonic()
        self._loaded = True
        for listener in self._reading_again:
            listener(None)
        log.info("office directory loaded: %d offices, %d services", len(offices), len(catalogue))

    async def _load_changed(self, office_codes: set[str], version: Version) -> None:
        """Read again only the offices changed since this copy's version."""
        async with self.sessions() as session:
            catalogue, offices = await _read(session, office_codes)
        for code in office_codes:
            self._offices.pop(code, None)  # gone from the record, or replaced just below
        self._offices.update(offices)
        for service_code in _places(offices):
            self._near.setdefault(service_code, GeoIndex())
        # Most changes are a clerk's template, which moves nothing: put and remove leave an
        # index alone unless the office moved, or gained or dropped its service.
        for service_code, index in self._near.items():
            for code in office_codes:
                office = offices.get(code)
                if office is not None and office.place is not None and service_code in office.services:
                    index.put(office.place)
                else:
                    index.remove(code)
        self._services, self._version = catalogue, version
        for listener in self._reading_again:
            for code in office_codes:
                listener(code)
        log.info("office directory: %d changed offices read again", len(office_codes))

    async def bookable(
        self, *, office_code: str, service_code: str, session: AsyncSession | None = None
    ) -> BookableOffice:
        """The office and service a booking names, or the error that says which is wrong.
        ``session``: the caller's, if it holds one, for the record's word on an office not
        known here: a second connection taken while holding one, by many requests at once
        (walk-ins at a new office), had left none for any of them until the pool's 30 s."""
        office_code = normalize_code(office_code, "office_code")
        service_code = normalize_code(service_code, "service_code")
        await self._keep_fresh()
        office = self._offices.get(office_code)
        service = self._services.get(service_code)
        if office is None or service is None or service_code not in office.services:
            # Not known here (new since the load), or not offered: SQL has the last word,
            # and says which error it is.
            if session is not None:
                found = await bookable_office(session=session, office_code=office_code, service_code=service_code)
            else:
                async with self.sessions() as own:
                    found = await bookable_office(session=own, office_code=office_code, service_code=service_code)
            self._remember(found)
            return found
        return BookableOffice(
            id=office.id,
            code=office.code,
            name_fa=office.name_fa,
            service_code=service_code,
            service_name_fa=service.name_fa,
            pool=office.pool(service_code),
        )

    async def pools(self, office_codes: set[str]) -> dict[str, set[str]]:
        """The seat pools each office's services may draw from: the shared one and, at most,
        one per service it offers (its template says which ones have their own). Offices this
        copy does not hold, or holds only as one booking found it (no template: a job's process
        loads no directory), are read from the record: the waitlists of its other services' own
        seats had been left out of a fill."""
        read: dict[str, _Office] = {}
        if missing := {
            code for code in office_codes if (known := self._offices.get(code)) is None or known.template is None
        }:
            async with self.sessions() as session:
                _, read = await _read(session, missing)
        pools = {}
        for code in office_codes:
            office = read.get(code) or self._offices.get(code)
            pools[code] = {SHARED_POOL} | (office.services if office is not None else set())
        return pools

    def pool(self, office_code: str, service_code: str) -> str:
        """The seat pool the service books from at the office, as a booking takes it (the
        shared one for an office this copy does not hold yet)."""
        office = self._offices.get(office_code)
        return office.pool(service_code) if office is not None else SHARED_POOL

    async def services(self) -> list[ServiceOut]:
        """The national catalogue, by code: read with the registry, so that the home page and
        the API list it with no trip to the record (a process that loads no directory reads it)."""
        await self._keep_fresh()
        if self._services:
            return sorted(self._services.values(), key=lambda service: service.code)
        async with self.sessions() as session:
            return await list_services(session=session)

    async def has_service(self, service_code: str) -> bool:
        await self._keep_fresh()
        if service_code in self._services:
            return True
        async with self.sessions() as session:
            found = await session.get(Service, service_code)
        if found is not None:
            self._services[service_code] = service_out(found)
        return found is not None

    async def nearest(
        self, *, service_code: str, lat: float, lon: float, count: int, radius_km: float
    ) -> list[tuple[str, float]]:
        """Up to ``count`` offices offering the service within ``radius_km`` of the point,
        nearest first, with their distances in km. An office new since the last load is found
        once the registry is read again (a rebuild has every instance read it all)."""
        await self._loaded_once()
        await self._keep_fresh()
        index = self._near.get(service_code)
        return index.nearest(lat, lon, count=count, radius_km=radius_km) if index is not None else []

    async def cards(self, office_codes: list[str]) -> dict[str, OfficeCard]:
        """Each office's card; those the copy does not hold are read from SQL in one query."""
        found: dict[str, OfficeCard] = {}
        missing = []
        for code in office_codes:
            office = self._offices.get(code)
            if office is not None and office.card is not None:
                found[code] = office.card
            else:
                missing.append(code)
        if missing:
            async with self.sessions() as session:
                rows = (
                    await session.execute(
                        select(Office.code, *_CARD_COLUMNS)
                        .join(City, City.id == Office.city_id)
                        .where(Office.code.in_(missing))
                    )
                ).all()
            for code, *card in rows:
                found[code] = _card(card)
        return found

    async def changed(self, office_code: str) -> None:
        """An office's name, services or template changed: forget it here, tell the others."""
        self._offices.pop(office_code, None)
        for listener in self._reading_again:
            listener(office_code)
        self._unannounced.add(office_code)
        await self._announce()

    async def _announce(self) -> None:
        """Bump the version, logging which office changed (one script writes both): the other
        instances then read that one office again, not all 17,000, which is a second of a
        worker's time, every second, once clerks across the country edit their templates on
        the same morning. This instance reads it again too, on its next look. What could not
        be told (Redis away) is told on a later look."""
        for office_code in sorted(self._unannounced):
            try:
                await log_change(self.redis, office_code)
            except RedisError:
                log.warning("could not tell the other instances that office %s changed; trying again", office_code)
                return
            self._unannounced.discard(office_code)

    def _remember(self, found: BookableOffice) -> None:
        office = self._offices.get(found.code)
        if office is None:
            # Its template is not known here: remember the pool found for this service only.
            office = self._offices[found.code] = _Office(
                id=found.id, code=found.code, name_fa=found.name_fa, template=None, services=set()
            )
        office.services.add(found.service_code)
        office.pools[found.service_code] = found.pool

    async def _loaded_once(self) -> None:
        """Read the registry whole, if this process never has: a job's process (which loads no
        directory as it starts) had answered its first searches from the empty copy while the
        load ran behind them, and a block's moves found no office nearby and cancelled every
        booking, an SMS "offices" none in the city."""
        if self._loaded:
            return
        async with self._first_load:
            if not self._loaded:
                await self.load()

    async def _keep_fresh(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < self.check_every or (self._reloading and not self._reloading.done()):
            return
        self._checked_at = now
        try:
            if self._unannounced:
                await self._announce()
            version = await self._current_version()
        except RedisError:
            return  # the booking itself will meet Redis's absence and answer 503
        if version != self._version:
            self._reloading = asyncio.create_task(self._reload(version))

    async def _reload(self, version: Version) -> None:
        try:
            changed = await self._changed_since(self._version, version)
            if changed is None:
                await self.load()
            else:
                await self._load_changed(changed, version)
        except Exception:
            log.exception("office directory reload failed; serving the copy in hand")

    async def _changed_since(self, mine: Version, current: Version) -> set[str] | None:
        """The offices changed after version ``mine`` up to ``current``; None when the log
        cannot say (it was trimmed, or Redis lost its data and counts again: a new epoch)
        and the whole registry must be read again."""
        (my_epoch, seen), (epoch, last) = mine, current
        if mine == UNKNOWN or last <= seen or (seen > 0 and epoch != my_epoch):
            return None
        by_version = {}
        for entry in await self.redis.zrangebyscore(keys.DIRECTORY_CHANGES, seen + 1, last):
            number, _, code = as_text(entry).partition("|")
            by_version[int(number)] = code
        if len(by_version) != last - seen or EVERY_OFFICE in by_version.values():
            return None
        return set(by_version.values())

    async def _current_version(self) -> Version:
        number, epoch = await self.redis.mget(keys.DIRECTORY_VERSION, keys.DIRECTORY_EPOCH)
        return (None if epoch is None else as_text(epoch)), int(number or 0)


BUMP = """
local version = redis.call('INCR', KEYS[1])
if redis.call('EXISTS', KEYS[3]) == 0 then redis.call('SET', KEYS[3], ARGV[3]) end
redis.call('ZADD', KEYS[2], version, version .. '|' .. ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[2]) - 1)
return version
"""
"""A new directory version, logged with the office it changed (keys.DIRECTORY_CHANGES); a new
epoch (keys.DIRECTORY_EPOCH) when Redis has none, having lost its data and started counting
again, so that nobody mistakes the new numbers for the old."""

EVERY_OFFICE = "*"
"""Logged as the office a change names when any office may have changed."""


async def log_change(redis: Redis, office_code: str) -> None:
    """Bump the directory's version, logging the office it changed (BUMP)."""
    await redis.register_script(BUMP)(
        keys=[keys.DIRECTORY_VERSION, keys.DIRECTORY_CHANGES, keys.DIRECTORY_EPOCH],
        args=[office_code, CHANGES_KEPT, secrets.token_hex(8)],
    )


async def reread_everywhere(redis: Redis) -> None:
    """Have every instance read the whole registry again, on its next look. A rebuild does:
    it counts Redis again from the record, which may hold offices imported since the
    instances loaded theirs (they would be missing from nearby searches)."""
    await log_change(redis, EVERY_OFFICE)


CHANGES_KEPT = 10_000
"""Changes kept in the log (keys.DIRECTORY_CHANGES), about 200 KB; an instance further behind
reads everything again."""


def _places(offices: dict[str, _Office]) -> dict[str, list[Entry]]:
    """Where the offices offering each service are."""
    by_service: dict[str, list[Entry]] = {}
    for office in offices.values():
        if office.place is not None:
            for service_code in office.services:
                by_service.setdefault(service_code, []).append(office.place)
    return by_service


async def _read(
    session: AsyncSession, office_codes: set[str] | None = None
) -> tuple[dict[str, ServiceOut], dict[str, _Office]]:
    """The catalogue, and the offices (all of them, or those named) as the copy holds them."""
    services = {service.code: service for service in await list_services(session=session)}
    offered_query = select(OfficeService.office_id, OfficeService.service_code)
    offices_query = (
        select(Office.id, Office.code, CapacityTemplate.template, *_CARD_COLUMNS)
        .join(City, City.id == Office.city_id)
        .outerjoin(CapacityTemplate, CapacityTemplate.office_id == Office.id)
    )
    if office_codes is not None:
        offered_query = offered_query.join(Office, Office.id == OfficeService.office_id).where(
            Office.code.in_(office_codes)
        )
        offices_query = offices_query.where(Office.code.in_(office_codes))
    offered: dict[int, set[str]] = {}
    for office_id, service_code in await session.execute(offered_query):
        offered.setdefault(office_id, set()).add(service_code)
    offices = {}
    for office_id, code, template, *columns in await session.execute(offices_query):
        card = _card(columns)
        offices[code] = _Office(
            id=office_id,
            code=code,
            name_fa=card.name_fa,
            template=template,
            services=offered.get(office_id, set()),
            card=card,
            place=place(code, card.lat, card.lon),
        )
    return services, offices
