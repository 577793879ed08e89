"""The correctness check after a load test: no seat sold twice, no citizen over their limits.

    DATABASE_URL=... REDIS_URL=... NOBAT_TZ=... .venv/bin/python -m loadtests.check

For every slot of every office-day in Redis (the horizon):
- bookings in SQL holding a seat (booked, checked_in) == the slot's used counter in Redis
  (field ``u|pool|HH:MM`` of ``nobat:{o:CODE}:day:YYYY-MM-DD``);
- used <= seats (field ``s|pool|HH:MM``), capped days too: a cap (a crowd cap or a
  restriction) bounds the day's total, never a slot's own seats, which every script keeps;
- an office-day with bookings in SQL that Redis lacks is a failure too (Redis lost it: its
  rebuild would count them against seats nobody compared);
every citizen waitlisted in SQL has their place in the line in Redis (``nobat:{o:CODE}:wait:
YYYY-MM-DD:POOL``): left out, they would never be promoted; and every line of the horizon
in Redis holds only citizens the record has waiting there, each once (one left in it, promoted
or cancelled, would be given a second seat);
for every national ID: at most one active booking (waitlisted, booked, checked_in) per
service per day, and at most NOBAT_MAX_ACTIVE_BOOKINGS active from today on; and for every
mobile, no more bookings made on the web and by SMS (waitlist joins included, cancelled
ones too) within NOBAT_BOOKINGS_PER_MOBILE's window than it allows.

SQL above Redis, or above the seats, is an overbooking. Redis above SQL is a seat counted
but not sold (the safe side of a failed undo, corrected by the next rebuild): not an
overbooking, but still reported, and still a failure of the invariant.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple, cast

from redis import Redis
from redis.cluster import RedisCluster
from sqlalchemy import func, select

from app.booking.models import ACTIVE_STATUSES, SEAT_STATUSES, Booking, BookingStatus, Channel
from app.capacity import keys
from app.clock import Clock
from app.db import create_engine, session_factory
from app.offices.models import Office
from app.redis import CLUSTER_SCHEME
from app.settings import Settings, load_settings, parse_limit

SlotKey = tuple[str, str, str, str]  # (office code, day, pool, time)
MAX_LISTED = 20  # violations listed in full; the counts are always complete


@dataclass
class CheckResult:
    ok: bool = True
    overbooked: bool = False
    office_days: int = 0
    slots: int = 0
    seats_booked_sql: int = 0
    seats_used_redis: int = 0
    seats_total: int = 0  # seats of the horizon: a fully booked horizon's bookings
    days_missing_in_redis: int = 0
    waitlisted: int = 0
    waitlisted_not_in_line: int = 0
    line_not_waiting: int = 0  # codes in a Redis line the record has not waiting there, or twice
    sql_above_redis: int = 0
    redis_above_sql: int = 0
    used_above_seats: int = 0
    same_day_violations: int = 0
    too_many_violations: int = 0
    mobile_over_allowance: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    attempts: int = 1

    def note(self, kind: str, **detail: Any) -> None:
        if len(self.examples) < MAX_LISTED:
            self.examples.append({"kind": kind, **detail})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Record(NamedTuple):
    seated: dict[SlotKey, int]  # bookings holding a seat, by slot
    same_day: list[tuple[str, str, str, int]]
    too_many: list[tuple[str, int]]
    over_allowance: list[tuple[str, int]]
    waitlisted: dict[tuple[str, str, str], set[str]]  # (office code, day, pool) -> tracking codes


async def _sql_counts(
    database_url: str, tz: str, today: dt.date, last: dt.date, max_active: int, per_mobile: str
) -> _Record:
    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as session:
            seated = await session.execute(
                select(Office.code, Booking.date, Booking.pool, Booking.slot_time, func.count())
                .join(Office, Office.id == Booking.office_id)
                .where(Booking.status.in_(SEAT_STATUSES), Booking.date >= today, Booking.date <= last)
                .group_by(Office.code, Booking.date, Booking.pool, Booking.slot_time)
            )
            counts = {(code, day.isoformat(), pool, time): int(n) for code, day, pool, time, n in seated}
            same_day = [
                (nid, service, day.isoformat(), int(n))
                for nid, service, day, n in await session.execute(
                    select(Booking.national_id, Booking.service_code, Booking.date, func.count())
                    .where(Booking.status.in_(ACTIVE_STATUSES))
                    .group_by(Booking.national_id, Booking.service_code, Booking.date)
                    .having(func.count() > 1)
                )
            ]
            too_many = [
                (nid, int(n))
                for nid, n in await session.execute(
                    select(Booking.national_id, func.count())
                    .where(Booking.status.in_(ACTIVE_STATUSES), Booking.date >= today)
                    .group_by(Booking.national_id)
                    .having(func.count() > max_active)
                )
            ]
            allowed, seconds = parse_limit(per_mobile)
            # On the service's clock: SQLite keeps its wall time in NOBAT_TZ, not UTC.
            since = Clock(tz).now() - dt.timedelta(seconds=seconds)
            over_allowance = [
                (mobile, int(n))
                for mobile, n in await session.execute(
                    select(Booking.mobile, func.count())
                    .where(Booking.channel.in_([Channel.WEB, Channel.SMS]), Booking.created_at >= since)
                    .group_by(Booking.mobile)
                    .having(func.count() > allowed)
                )
            ]
            waitlisted: dict[tuple[str, str, str], set[str]] = {}
            for code, day, pool, tracking_code in await session.execute(
                select(Office.code, Booking.date, Booking.pool, Booking.tracking_code)
                .join(Office, Office.id == Booking.office_id)
                .where(Booking.status == BookingStatus.WAITLISTED, Booking.date >= today, Booking.date <= last)
            ):
                waitlisted.setdefault((code, day.isoformat(), pool), set()).add(tracking_code)
        return _Record(counts, same_day, too_many, over_allowance, waitlisted)
    finally:
        await engine.dispose()


def _connect(url: str) -> Redis:
    """The service's Redis: a cluster (``redis+cluster://``, as production's) read through
    every master, SCAN and pipelines included; it had refused the scheme."""
    if url.startswith(CLUSTER_SCHEME):
        return cast(Redis, RedisCluster.from_url("redis://" + url.removeprefix(CLUSTER_SCHEME)))
    return Redis.from_url(url)


def _redis_days(redis: Redis, days: set[str]) -> dict[tuple[str, str], dict[str, str]]:
    """Every office-day hash of the horizon, read in pipelined batches."""
    found: list[str] = []
    for raw in redis.scan_iter(match=keys.OFFICE_DAY_PATTERN, count=5000):
        key = raw.decode()
        if key.rsplit(":", 1)[1] in days:
            found.append(key)
    result: dict[tuple[str, str], dict[str, str]] = {}
    for start in range(0, len(found), 2000):
        batch = found[start : start + 2000]
        with redis.pipeline(transaction=False) as pipe:
            for key in batch:
                pipe.hgetall(key)
            hashes = pipe.execute()
        for key, fields in zip(batch, hashes, strict=True):
            code = key.split("{o:", 1)[1].split("}", 1)[0]
            day = key.rsplit(":", 1)[1]
            result[(code, day)] = {k.decode(): v.decode() for k, v in fields.items()}
    return result


def _redis_lines(
    redis: Redis, lines: list[tuple[str, str, str]], days: set[str]
) -> dict[tuple[str, str, str], list[str]]:
    """The tracking codes in each line (office code, day, pool), in order: the record's lines
    and every other line Redis holds for the horizon, read in pipelined batches."""
    wanted = set(lines)
    for raw in redis.scan_iter(match=keys.WAITLIST_PATTERN, count=5000):
        code, day, pool = keys.parse_waitlist(raw.decode())
        if day.isoformat() in days:
            wanted.add((code, day.isoformat(), pool))
    found: dict[tuple[str, str, str], list[str]] = {}
    ordered = sorted(wanted)
    for start in range(0, len(ordered), 2000):
        batch = ordered[start : start + 2000]
        with redis.pipeline(transaction=False) as pipe:
            for code, day, pool in batch:
                pipe.lrange(keys.waitlist(code, dt.date.fromisoformat(day), pool), 0, -1)
            for line, codes in zip(batch, pipe.execute(), strict=True):
                found[line] = [raw.decode() for raw in codes]
    return found


def check_once(
    *,
    database_url: str,
    redis_url: str,
    tz: str,
    horizon_days: int,
    max_active: int,
    per_mobile: str,
    first_day: dt.date | None = None,
) -> CheckResult:
    """``first_day``: the first day checked (today in ``tz`` unless given): a run's own first
    day, so that a run that crossed midnight still checks the day it booked."""
    started = time.perf_counter()
    result = CheckResult()
    today = first_day or Clock(tz).today()
    horizon_days += (Clock(tz).today() - today).days  # and up to the horizon's end from today
    last = today + dt.timedelta(days=horizon_days - 1)
    days = {(today + dt.timedelta(days=i)).isoformat() for i in range(horizon_days)}
    # SQL first, then Redis: a booking committing in between shows as Redis above SQL, never
    # as an overbooking; the caller retries a failed check once the service is quiet.
    record = asyncio.run(_sql_counts(database_url, tz, today, last, max_active, per_mobile))
    sql, same_day, too_many, over_allowance = record.seated, record.same_day, record.too_many, record.over_allowance
    redis = _connect(redis_url)
    try:
        # The lines first, nearest the record's read of who waits: a promotion or a cancel
        # landing between the two reads reads as a place lost (the check is tried again).
        lines = _redis_lines(redis, list(record.waitlisted), days)
        office_days = _redis_days(redis, days)
    finally:
        redis.close()
    for line, codes in record.waitlisted.items():
        result.waitlisted += len(codes)
        if missing := codes - set(lines[line]):
            result.waitlisted_not_in_line += len(missing)
            result.note("waitlisted_not_in_line", office=line[0], date=line[1], pool=line[2], missing=len(missing))
    # And the other way: a line holds only citizens the record has waiting, each once. A code
    # left in a line (promoted, cancelled) would be given a second seat by the next fill, and
    # any line with people in it keeps everyone else from booking the day.
    for line, in_line in lines.items():
        stale = set(in_line) - record.waitlisted.get(line, set())
        twice = len(in_line) - len(set(in_line))
        if stale or twice:
            result.line_not_waiting += len(stale) + twice
            result.note("line_not_waiting", office=line[0], date=line[1], pool=line[2], stale=len(stale), twice=twice)

    result.office_days = len(office_days)
    seen: set[SlotKey] = set()
    for (code, day), fields in office_days.items():
        for name in fields:
            if not name.startswith(("s|", "u|")):
                continue
            _, pool, slot = name.split("|")
            slot_key = (code, day, pool, slot)
            if slot_key in seen:
                continue
            seen.add(slot_key)
            result.slots += 1
            used = int(fields.get(f"u|{pool}|{slot}", "0"))
            seats = int(fields.get(f"s|{pool}|{slot}", "0"))
            result.seats_total += seats
            booked = sql.get(slot_key, 0)
            result.seats_booked_sql += booked
            result.seats_used_redis += used
            if booked > used:
                result.sql_above_redis += 1
                result.note("sql_above_redis", office=code, date=day, pool=pool, slot=slot, sql=booked, redis=used)
            elif used > booked:
                result.redis_above_sql += 1
                result.note("redis_above_sql", office=code, date=day, pool=pool, slot=slot, sql=booked, redis=used)
            if max(used, booked) > seats:
                result.used_above_seats += 1
                result.note(
                    "above_seats", office=code, date=day, pool=pool, slot=slot, seats=seats, sql=booked, redis=used
                )
    # Bookings in SQL for a slot Redis does not know, or on a day it lacks altogether (it lost
    # it: the rebuild on first use would count them against seats nobody compared).
    missing_days: set[tuple[str, str]] = set()
    for slot_key, booked in sql.items():
        if slot_key in seen:
            continue
        result.seats_booked_sql += booked
        if (slot_key[0], slot_key[1]) in office_days:
            result.sql_above_redis += 1
            result.note("sql_slot_missing_in_redis", office=slot_key[0], date=slot_key[1], slot=slot_key[3], sql=booked)
        elif (slot_key[0], slot_key[1]) not in missing_days:
            missing_days.add((slot_key[0], slot_key[1]))
            result.note("sql_day_missing_in_redis", office=slot_key[0], date=slot_key[1])
    result.days_missing_in_redis = len(missing_days)

    result.same_day_violations = len(same_day)
    for nid, service, day, n in same_day[:5]:
        result.note("same_day", national_id=nid[:4] + "******", service=service, date=day, active=n)
    result.too_many_violations = len(too_many)
    for nid, n in too_many[:5]:
        result.note("too_many", national_id=nid[:4] + "******", active=n)
    result.mobile_over_allowance = len(over_allowance)
    for mobile, n in over_allowance[:5]:
        result.note("mobile_over_allowance", mobile=mobile[:4] + "*****" + mobile[-2:], made=n)

    result.overbooked = bool(
        result.sql_above_redis or result.used_above_seats or result.same_day_violations or result.too_many_violations
    )
    result.ok = not (
        result.overbooked
        or result.redis_above_sql
        or result.mobile_over_allowance
        or result.days_missing_in_redis
        or result.waitlisted_not_in_line
        or result.line_not_waiting
    )
    result.seconds = round(time.perf_counter() - started, 2)
    return result


def check_service(settings: Settings, *, per_mobile: str | None = None) -> CheckResult:
    """``check_once`` against a service's own stores, zone and limits (``per_mobile``: its
    NOBAT_BOOKINGS_PER_MOBILE unless given)."""
    assert settings.redis_url, "the check reads the service's Redis"
    return check_once(
        database_url=settings.database_url,
        redis_url=settings.redis_url,
        tz=settings.tz,
        horizon_days=settings.horizon_days,
        max_active=settings.max_active_bookings,
        per_mobile=per_mobile or settings.bookings_per_mobile,
    )


def check(
    *,
    database_url: str,
    redis_url: str,
    tz: str,
    horizon_days: int,
    max_active: int,
    per_mobile: str,
    attempts: int = 3,
    first_day: dt.date | None = None,
) -> CheckResult:
    """Check, and check again a little later if it failed: requests still finishing when the
    load stopped can leave a seat taken in Redis whose row is a moment from committing. Not
    an overbooking: read in the order ``check_once`` reads, one in flight never looks like
    one, and a later attempt (after a recount, say) must not hide it."""
    result = CheckResult()
    for attempt in range(1, attempts + 1):
        result = check_once(
            database_url=database_url,
            redis_url=redis_url,
            tz=tz,
            horizon_days=horizon_days,
            max_active=max_active,
            per_mobile=per_mobile,
            first_day=first_day,
        )
        result.attempts = attempt
        if result.ok or result.overbooked:
            break
        time.sleep(3)
    return result


def main() -> None:
    settings = load_settings()
    if not settings.redis_url:
        raise SystemExit("set REDIS_URL (and DATABASE_URL or NOBAT_VAR_DIR) to the service's stores")
    result = check(
        database_url=settings.database_url,
        redis_url=settings.redis_url,
        tz=settings.tz,
        horizon_days=settings.horizon_days,
        max_active=settings.max_active_bookings,
        per_mobile=settings.bookings_per_mobile,
    )
    print(json.dumps(result.as_dict(), indent=2))
    sys.exit(0 if result.ok else 1)


if __name__ == "__main__":
    main()
