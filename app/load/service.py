"""Live load: how busy each office is, and the nearby offices ranked so that crowds spread out.

A nearby search finds the nearest offices that offer the service in memory
(app.offices.nearest), and weighs each by its standing (app.load.standings: kept until its
counters change; those not kept are worked out from the counters, read in one pipelined trip
to Redis or from the instance's copy), its distance and the clock; SQL is asked nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
from bisect import bisect_right
from collections import Counter, defaultdict

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.capacity import keys
from app.capacity.plan import minute_of
from app.capacity.reading import EMPTY_DAY, DaySums, waiting_report
from app.capacity.service import Capacity, day_for_reading, day_room
from app.clock import Clock
from app.db import Sessions, Within
from app.errors import InvalidInput
from app.load.errors import CityNotFound
from app.load.ranking import BUSYNESS_FA, NEVER, Candidate, Standing, busyness, rank, stand, weigh
from app.load.schemas import HourLoad, NearbyOffice, NearbyResult, OfficeLoad
from app.load.standings import Standings
from app.locale import check_text, jalali_date, jalali_time, normalize_text, to_persian_digits
from app.offices.directory import OfficeCard, OfficeDirectory
from app.offices.errors import OfficeNotFound, ServiceNotFound
from app.offices.models import City, Office
from app.offices.service import named, normalize_code

# Iran's bounding box, with a margin: a position outside it is a typo, not a citizen.
LAT_RANGE = (24.0, 40.5)
LON_RANGE = (43.0, 64.0)
SEARCH_RADII_KM = (30, 150, 1000)
CITY_CANDIDATES = 300
"""Offices around a city's centre that its searches draw their candidates from (Tehran has
some 600 offering a common service in the demo network)."""
CITY_RADIUS_KM = 10.0
"""How far from its centre a city's offices are taken to be its own, for that draw."""
MAX_LIMIT = 50


class LoadService:
    def __init__(self, *, capacity: Capacity, clock: Clock, offices: OfficeDirectory) -> None:
        self.offices = offices
        self.capacity = capacity
        self.redis = capacity.redis
        self.clock = clock
        self.standings = Standings(capacity.reads)
        offices.on_read_again(self.standings.forget)

    async def report_waiting(self, *, office_code: str, count: int) -> None:
        if not 0 <= count <= 1000:
            raise InvalidInput(
                "waiting", "Waiting must be 0 to 1000.", detail_fa="تعداد منتظران باید بین ۰ و ۱۰۰۰ باشد."
            )
        try:
            await self.redis.hset(keys.WAITING_NOW, office_code, f"{count}|{self.clock.now().isoformat()}")
        finally:
            # Told even when the write failed: it may have landed (a timeout), and the others
            # keep a report as long as the counters now, not a ttl.
            self.capacity.reads.waiting_changed(office_code)  # the others see it within their ttl

    async def nearby(
        self,
        *,
        sessions: Sessions,
        service_code: str,
        day: dt.date | None,
        lat: float | None,
        lon: float | None,
        city: str | None,
        limit: int,
    ) -> NearbyResult:
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidInput(
                "limit",
                f"limit must be 1 to {MAX_LIMIT}.",
                detail_fa=f"limit باید بین ۱ و {to_persian_digits(str(MAX_LIMIT))} باشد.",
            )
        service_code = normalize_code(service_code, "service")
        if not await self.offices.has_service(service_code):
            raise ServiceNotFound()
        by_city = lat is None or lon is None
        lat, lon = await self._origin(sessions, lat, lon, city)
        now = self.clock.now()
        day = day or now.date()
        self.capacity.check_horizon(day, now.date())
        not_before = now.strftime("%H:%M") if day == now.date() else ""

        # The nearest within the first radius that holds ``limit`` offices (the nearest overall
        # when none does); three times as many as shown, for the ranking to choose from.
        weighed = max(3 * limit, 30)
        nearest = await self.offices.nearest(
            service_code=service_code,
            lat=lat,
            lon=lon,
            count=CITY_CANDIDATES if by_city else weighed,
            radius_km=SEARCH_RADII_KM[-1],
        )
        for radius in SEARCH_RADII_KM:
            found = [(code, km) for code, km in nearest if km <= radius]
            if len(found) >= limit:
                break
        if by_city:
            # A city's search has one origin, its centre: every one of them had weighed the
            # same thirty central offices, and a city of hundreds sent all its citizens to
            # those. Where the city holds more than are weighed, each search weighs its own
            # share of them, drawn at random. (A town has fewer: drawn from around it, its
            # own offices were left out of most searches.)
            in_city = [(code, km) for code, km in found if km <= CITY_RADIUS_KM]
            if len(in_city) > weighed:
                found = sorted(random.sample(in_city, weighed), key=lambda pair: pair[1])
            else:
                found = found[:weighed]  # the nearest, as a position's search weighs
        standings = await self._standings(sessions, service_code, [code for code, _ in found], day, now)

        # Minutes to a slot counted on the clock's face, as Python subtracts two times of one zone.
        now_minute = now.hour * 60 + now.minute + now.second / 60 - (day - now.date()).days * 1440
        candidates = []
        for code, km in found:
            standing = standings[code]
            if standing.status == "blocked":
                continue
            next_free, minutes = None, None
            if free_times := standing.free_times:
                first = bisect_right(free_times, not_before)  # the first free slot after not_before
                if first < len(free_times):
                    next_free = free_times[first]
                    minutes = minute_of(next_free) - now_minute
            candidates.append(weigh(code, km, standing, next_free, minutes))
        ranked = rank(candidates, limit)
        offices = await self.offices.cards([c.office_code for c in ranked])
        return NearbyResult(
            service_code=service_code,
            date=day.isoformat(),
            date_fa=jalali_date(day),
            origin_lat=lat,
            origin_lon=lon,
            offices=[_nearby_office(c, offices[c.office_code]) for c in ranked if c.office_code in offices],
        )

    async def nearby_soonest(
        self,
        *,
        sessions: Sessions,
        service_code: str,
        days: list[dt.date],
        lat: float | None,
        lon: float | None,
        city: str | None,
        limit: int,
    ) -> NearbyResult:
        """``nearby`` for the first of ``days`` on which an office found has a free seat, or
        for the first day when none has: a citizen asking for today after hours (or on a full
        day) is shown where to go next, not a list of "none left" (the search page, SMS)."""
        first: NearbyResult | None = None
        for day in days:
            result = await self.nearby(
                sessions=sessions, service_code=service_code, day=day, lat=lat, lon=lon, city=city, limit=limit
            )
            if any(o.next_free_slot for o in result.offices):
                return result
            first = first or result
        assert first is not None, "no day to search"
        return first

    async def office_load(self, *, session: AsyncSession, office_code: str) -> OfficeLoad:
        office_code = normalize_code(office_code, "office_code")
        if await session.scalar(select(Office.id).where(Office.code == office_code)) is None:
            raise OfficeNotFound()
        today = self.clock.today()
        day = await day_for_reading(self.capacity, sessions=Within(session), office_code=office_code, day=today)
        waiting, reported_at = waiting_report(await self.redis.hget(keys.WAITING_NOW, office_code), self.clock.now())
        by_hour: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for slot in day.slots:
            hour = f"{slot.time[:2]}:00"
            by_hour[hour][0] += slot.seats
            by_hour[hour][1] += slot.used
        used = sum(u for _, u in by_hour.values())
        # Hours show their slots' seats; the day's total is what it holds and can still take:
        # without a cap what each slot still has (an over-full one hides no other's: DaySums),
        # under one what each pool's day may still take (as RESERVE bounds it: a pool full
        # before a restriction took none of another pool's room).
        if day.cap_percent < 100:
            in_slots: Counter[str] = Counter()  # each pool's seats left in its slots
            for slot in day.slots:
                in_slots[slot.pool] += max(0, slot.seats - slot.used)
            seats = used + sum(min(max(0, room), in_slots[pool]) for pool, room in day.rooms().items())
        else:
            seats = used + sum(slot.free for slot in day.slots)
        load = 1.0 if seats == 0 else min(1.0, used / seats)
        level = busyness(load, waiting)
        return OfficeLoad(
            office_code=office_code,
            date=today.isoformat(),
            date_fa=jalali_date(today),
            status=day.status,
            seats=seats,
            used=used,
            load=round(load, 3),
            busyness=level.value,
            busyness_fa=BUSYNESS_FA[level],
            waiting_now=waiting,
            waiting_reported_at=reported_at,
            hours=[
                HourLoad(hour=h, seats=s, used=u, load=round(1.0 if s == 0 else min(1.0, u / s), 3))
                for h, (s, u) in sorted(by_hour.items())
            ],
        )

    async def _standings(
        self, sessions: Sessions, service_code: str, codes: list[str], day: dt.date, now: dt.datetime
    ) -> dict[str, Standing]:
        """The offices' standings for the service on the day, as of ``now``: those kept, and the
        others worked out (heard first: what the other instances changed is forgotten before
        any is taken)."""
        asked = await self.capacity.reads.hear()
        kept = self.standings.of(service_code, day, asked)
        not_before = now.strftime("%H:%M") if day == now.date() else ""
        standings: dict[str, Standing] = {}
        unkept = []
        for code in codes:
            entry = kept.get(code)
            # Today's is worked out again once the next of its slots has begun.
            if entry is not None and entry[0] > asked and not_before < entry[1].changes_at:
                standings[code] = entry[1]
            else:
                unkept.append(code)
        if unkept:
            standings.update(await self._stand(sessions, service_code, unkept, day, now))
        else:
            # Yield once, as a search that reads Redis does: a busy worker then takes its
            # searches in the order they came, and one that waited for Redis is not overtaken
            # by every later one with nothing to read. Measured at saturation (wrk, 2 workers):
            # p99 of random searches 101-121 -> 72 ms, of a crowd around a few offices 78-85 ->
            # 37-43 ms, and 12-42% more searches a second. (Why so many more was not pinned
            # down: in process, 64 searches at a time cost the same CPU with it or without.)
            await asyncio.sleep(0)
        return standings

    async def _stand(
        self, sessions: Sessions, service_code: str, codes: list[str], day: dt.date, now: dt.datetime
    ) -> dict[str, Standing]:
        """The offices' standings for the service on the day, worked out from their counters
        (app.capacity.reading). Days Redis lacks are materialised through one session, opened
        only then, and read again in one trip."""
        read = await self.capacity.reads.sums(codes, day)
        standings = self._from_counters(service_code, day, now, read)
        if missing := [code for code, (summed, _, _) in read.items() if summed is None]:
            async with sessions() as session:
                for code in missing:
                    await self.capacity.materialise_day(session=session, office_code=code, day=day)
            read = await self.capacity.reads.sums(missing, day)
            standings.update(self._from_counters(service_code, day, now, read))
        return standings

    def _from_counters(
        self, service_code: str, day: dt.date, now: dt.datetime, read: dict[str, tuple[DaySums | None, int, float]]
    ) -> dict[str, Standing]:
        """Standings worked out from what ``DayReader.sums`` just answered, each kept for as long
        as the copy keeps what it came from, and until the next of its slots begins
        (``Standing.changes_at``). Called with no await since the read: a change made or heard
        of after it has forgotten the copy, and then finds the standing to forget."""
        monotonic = time.monotonic()
        kept = self.standings.of(service_code, day, monotonic)
        # Today's slots that have begun are past: an empty morning is no free seat at 13:00,
        # nor a lighter load (an office with it and one seat left had ranked above one with a
        # full morning and ten free in the afternoon).
        not_before = now.strftime("%H:%M") if day == now.date() else ""
        standings = {}
        for code, (read_sums, waiting, until) in read.items():
            summed = read_sums or EMPTY_DAY
            # The pool a booking would take (its own counter if the template gives the service
            # one, on any day), not whichever the day happens to hold: a desk open on Saturdays
            # only has no seats for it on Sunday, whatever the shared counter has.
            pool = summed.of(self.offices.pool(code, service_code), not_before)
            free = pool.free_ahead
            if summed.cap < 100:  # the cap bounds the whole day, begun slots too
                free = min(free, max(0, day_room(pool.planned, pool.used, summed.cap)))
            standing = standings[code] = stand(
                status=summed.status,
                seats=pool.used_ahead + free,
                used=pool.used_ahead,
                # The room now says nothing of another day: an office with a queue today and
                # an empty tomorrow had ranked low, and shown "busy", for tomorrow.
                waiting=waiting if day == now.date() else 0,
                free_times=pool.free_times,
                # A day Redis lacks even after materialising (a race with a recount) is not
                # known to be closed: no free slot, as a full one. A cap that lets the day sell
                # nothing (a 0% restriction, a share that rounds to no seat) closes it: shown
                # open and full, it offered a line the join then refused.
                open=(pool.planned * summed.cap // 100 if summed.cap < 100 else pool.planned) > 0 or read_sums is None,
                changes_at=pool.next_start or NEVER,  # another day's: its first slot, after midnight
            )
            if until > monotonic:
                self.standings.keep(kept, code, until, standing)
        return standings

    async def _origin(
        self, sessions: Sessions, lat: float | None, lon: float | None, city: str | None
    ) -> tuple[float, float]:
        if lat is not None and lon is not None:
            if not LAT_RANGE[0] <= lat <= LAT_RANGE[1]:
                raise InvalidInput("lat", "The position is not in Iran.", detail_fa="این موقعیت در ایران نیست.")
            if not LON_RANGE[0] <= lon <= LON_RANGE[1]:
                raise InvalidInput("lon", "The position is not in Iran.", detail_fa="این موقعیت در ایران نیست.")
            return lat, lon
        if city:
            # PostgreSQL cannot compare text holding NUL: refused here, with a 422, for the API
            # and the search page alike.
            value = normalize_text(check_text(city, "city", max_length=100, label_fa="نام شهر"))
            query = select(City.lat, City.lon).order_by(City.population.desc()).limit(1)
            match = named(value, City.name_fa, City.name_en)
            if value.isascii() and value.isdecimal() and len(value) <= 9:
                match = match | (City.id == int(value))
            async with sessions() as session:
                row = (await session.execute(query.where(match))).first()
            if row is None:
                raise CityNotFound()
            return float(row[0]), float(row[1])
        raise InvalidInput("lat", "Give lat and lon, or a city.", detail_fa="موقعیت (lat و lon) یا نام شهر را بدهید.")


def _nearby_office(candidate: Candidate, office: OfficeCard) -> NearbyOffice:
    level = busyness(candidate.load, candidate.waiting)
    return NearbyOffice(
        code=candidate.office_code,
        name_fa=office.name_fa,
        address_fa=office.address_fa,
        city_fa=office.city_fa,
        lat=office.lat,
        lon=office.lon,
        status=candidate.status,
        restricted=candidate.status == "restricted",
        open=candidate.open,
        distance_km=round(candidate.distance_km, 2),
        seats_free=candidate.free,
        load=round(candidate.load, 3),
        busyness=level.value,
        busyness_fa=BUSYNESS_FA[level],
        waiting_now=candidate.waiting,
        next_free_slot=candidate.next_free,
        next_free_slot_fa=jalali_time(dt.time.fromisoformat(candidate.next_free)) if candidate.next_free else None,
        score=round(candidate.score, 4),
    )
