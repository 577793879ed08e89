"""Crowd caps: the regulator's national or provincial limit on how full offices may get."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable

import msgspec
from redis.exceptions import RedisError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from app.capacity import keys
from app.capacity.errors import CapacityRebuilding
from app.capacity.models import CrowdCap
from app.capacity.service import Capacity
from app.errors import DomainError, InvalidInput, NotFound
from app.locale import check_text, normalize_digits
from app.offices.models import City, Office, Province


class CrowdCapNotFound(NotFound):
    code = "crowd_cap_not_found"
    message_fa = "چنین سقف ازدحامی ثبت نشده است."
    message_en = "No such crowd cap."


class CrowdCapExists(DomainError):
    code = "crowd_cap_exists"
    status = 409
    message_fa = "همین سقف ازدحام (همان استان، بازه، درصد و دلیل) پیش‌تر ثبت شده و برقرار است."
    message_en = "This crowd cap (same province, dates, percent and reason) is in force already."


class CrowdCapOut(msgspec.Struct):
    id: int
    province_code: str | None  # None: the whole country
    starts_on: str
    ends_on: str
    percent: int
    reason: str
    created_by: str
    active: bool
    # Recorded, but Redis refused to take it just now: it reaches the counters within a
    # minute (``finish``). A 503 had the regulator add the cap a second time.
    pending: bool = False


log = logging.getLogger(__name__)

REASON_MAX = 500  # the column's length
MAX_AHEAD = dt.timedelta(days=366)
"""How far ahead a cap may start (a directive for the coming year at most)."""
CAP_REQUEST_SECONDS = 60
"""A cap noted this recently is its request's to tell the counters: the job, reading the record
before the request's commit, would tell the old caps and forget the note."""


def province_code_of(value: str | None) -> str | None:
    """A province code as typed («۰۱», "01 "), folded to the registry's form. (None means the
    whole country; a blank code is left for the caller to judge, never read as None.)"""
    if value is None:
        return None
    return normalize_digits(check_text(value, "province_code", max_length=10, label_fa="کد استان")).strip()


async def _province_id(session: AsyncSession, province_code: str | None) -> int | None:
    if province_code is None:
        return None
    province_id = await session.scalar(select(Province.id).where(Province.code == province_code))
    if province_id is None:
        raise InvalidInput("province_code", "No province has this code.", detail_fa="استانی با این کد وجود ندارد.")
    return province_id


async def _offices_of(session: AsyncSession, province_id: int | None) -> list[str] | None:
    if province_id is None:
        return None  # every office
    rows = await session.scalars(
        select(Office.code).join(City, City.id == Office.city_id).where(City.province_id == province_id)
    )
    return list(rows)


Recorder = Callable[["CrowdCapOut"], Awaitable[None]]
"""What the caller writes in the same commit as a cap (the regulator's audit entry): a cap
recorded without it, and then refused (Redis away), had no trace of who set it."""


async def add(
    *,
    session: AsyncSession,
    capacity: Capacity,
    today: dt.date,
    province_code: str | None,
    starts_on: dt.date,
    ends_on: dt.date,
    percent: int,
    reason: str,
    created_by: str,
    record: Recorder | None = None,
    then: Then | None = None,
) -> CrowdCapOut:
    """Record a cap and make it bite in Redis at once; bookings already made stand.
    ``record`` adds to the same commit (the regulator's audit entry); ``then``, what
    follows its telling (``Then``)."""
    if not 0 <= percent <= 100:
        raise InvalidInput("percent", "percent must be 0 to 100.", detail_fa="درصد باید بین ۰ و ۱۰۰ باشد.")
    if ends_on < starts_on or ends_on < today:
        raise InvalidInput(
            "ends_on", "The cap must end after it starts, and not in the past.", detail_fa="بازهٔ تاریخ درست نیست."
        )
    if starts_on > today + MAX_AHEAD:
        # A typo's year (9999) made every clerk's later check of the cap's weeks overflow.
        raise InvalidInput(
            "starts_on", "A cap starts within a year from today.", detail_fa="محدودیت باید تا یک سال آینده آغاز شود."
        )
    if not check_text(reason, "reason", max_length=REASON_MAX, multiline=True, label_fa="دلیل").strip():
        raise InvalidInput("reason", "Give the reason (the directive).", detail_fa="دلیل (مصوبه) را بنویسید.")
    province_code = province_code_of(province_code)
    province_id = await _province_id(session, province_code)
    reason = reason.strip()
    # A retry of a cap whose answer was slow (a national one tells every office's counters
    # before it answers) recorded it twice, and lifting it then left the copy in force.
    same = (
        select(CrowdCap.id)
        .where(
            func.coalesce(CrowdCap.province_id, 0) == (province_id or 0),
            CrowdCap.starts_on == starts_on,
            CrowdCap.ends_on == ends_on,
            CrowdCap.percent == percent,
            CrowdCap.reason == reason,
            CrowdCap.lifted_at.is_(None),
        )
        .limit(1)
    )
    if (earlier := await session.scalar(same)) is not None:
        raise CrowdCapExists(crowd_cap_id=earlier)
    cap = CrowdCap(
        province_id=province_id,
        starts_on=starts_on,
        ends_on=ends_on,
        percent=percent,
        reason=reason,
        created_by=created_by,
    )
    session.add(cap)
    try:
        await session.flush()
    except IntegrityError:  # the same order, posted at the same instant, recorded first?
        await session.rollback()
        if (earlier := await session.scalar(same)) is None:  # another fault: not "in force already"
            raise
        raise CrowdCapExists(crowd_cap_id=earlier) from None
    out = _out(cap, province_code)
    if record is not None:
        await record(out)
    return await _commit(session, capacity, today, out, province_id, then=then)


async def lift(
    *,
    session: AsyncSession,
    capacity: Capacity,
    today: dt.date,
    cap_id: int,
    now: dt.datetime,
    record: Recorder | None = None,
    then: Then | None = None,
) -> CrowdCapOut:
    cap = await session.get(CrowdCap, cap_id)
    if cap is None:
        raise CrowdCapNotFound()
    cap.lifted_at = cap.lifted_at or now
    province_id = cap.province_id
    out = _out(cap, await _province_code(session, province_id))
    if record is not None:
        await record(out)
    return await _commit(session, capacity, today, out, province_id, then=then)


async def _commit(
    session: AsyncSession,
    capacity: Capacity,
    today: dt.date,
    out: CrowdCapOut,
    province_id: int | None,
    *,
    then: Then | None = None,
) -> CrowdCapOut:
    """Commit a cap added or lifted, noted first for the minute's job, then tell the counters
    (``pending`` if Redis refused)."""
    change = (await capacity.apply_later(str(out.id), noted_in=keys.CAPS_TO_APPLY)).change
    await session.commit()
    out.pending = not await _tell(session, capacity, today, out.id, province_id, change, then=then)
    return out


Then = Callable[[set[str] | None], Awaitable[None]]
"""What follows a cap told the counters, given its offices (None: every office): the lines
there filled, for a lift. Done before the cap's note is forgotten, so a failure is tried again."""


async def finish(*, session: AsyncSession, capacity: Capacity, today: dt.date, then: Then | None = None) -> int:
    """The minute's job (workers.cron): tell the counters of the caps added or lifted whose
    request could not (Redis refused it, or the process stopped). The caps told."""
    if not await capacity.is_built():
        return 0  # a recount reads them from the record itself
    done = 0
    noted = await capacity.to_apply(older_than=CAP_REQUEST_SECONDS, noted_in=keys.CAPS_TO_APPLY, ids=True)
    for field, change in noted.items():
        cap = await session.get(CrowdCap, int(field))
        if cap is None:
            await capacity.applied(field, change, noted_in=keys.CAPS_TO_APPLY)
        elif await _tell(session, capacity, today, cap.id, cap.province_id, change, then=then):
            done += 1
    return done


async def _tell(
    session: AsyncSession,
    capacity: Capacity,
    today: dt.date,
    cap_id: int,
    province_id: int | None,
    change: str,
    *,
    then: Then | None = None,
) -> bool:
    """Have the counters of the cap's offices say what the record says now; False if Redis
    refused (the note stays, for the minute's job)."""
    try:
        codes = await _offices_of(session, province_id)
        await capacity.refresh_meta(session=session, today=today, codes=codes)
        if then is not None:
            await then(None if codes is None else set(codes))
        await capacity.applied(str(cap_id), change, noted_in=keys.CAPS_TO_APPLY)
    # The cap is recorded: not the caller's error (the record's failure is OSError too, a
    # connection that could not be had: app.db.RECORD_AWAY).
    except (RedisError, CapacityRebuilding, SQLAlchemyError, OSError) as error:
        if not isinstance(error, RedisError):
            await session.rollback()
        log.warning("crowd cap %d reaches the counters (or its lines) by the next job", cap_id, exc_info=True)
        return False
    return True


async def list_caps(*, session: AsyncSession) -> list[CrowdCapOut]:
    rows = await session.execute(
        select(CrowdCap, Province.code).outerjoin(Province, Province.id == CrowdCap.province_id).order_by(CrowdCap.id)
    )
    return [_out(cap, code) for cap, code in rows]


async def _province_code(session: AsyncSession, province_id: int | None) -> str | None:
    if province_id is None:
        return None
    return await session.scalar(select(Province.code).where(Province.id == province_id))


def _out(cap: CrowdCap, province_code: str | None) -> CrowdCapOut:
    return CrowdCapOut(
        id=cap.id,
        province_code=province_code,
        starts_on=cap.starts_on.isoformat(),
        ends_on=cap.ends_on.isoformat(),
        percent=cap.percent,
        reason=cap.reason,
        created_by=cap.created_by,
        active=cap.lifted_at is None,
    )
