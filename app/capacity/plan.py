"""Day plans: which slots an office opens on a date, and how many seats each has.

Pure functions over the weekly template; Redis holds their output for the horizon.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from itertools import pairwise

import msgspec

SHARED_POOL = "*"
"""Seats every service draws on, unless the template gives a service counters of its own."""
MAX_RULES_PER_DAY = 24  # a day's spans, each its own counter or hours: a real day has a few


class DayRule(msgspec.Struct, frozen=True, kw_only=True):
    opens: str  # "08:00"
    closes: str  # "16:00"
    slot_minutes: int = 30
    seats: int = 2
    # A service with counters of its own (a passport desk, say); None means the shared pool.
    service: str | None = None


class WeeklyTemplate(msgspec.Struct, frozen=True):
    """Rules per weekday, 0 = Saturday (the Iranian week) … 6 = Friday."""

    days: dict[int, list[DayRule]]


class Slot(msgspec.Struct, frozen=True):
    pool: str
    time: str  # "HH:MM"
    seats: int


def iranian_weekday(day: dt.date) -> int:
    """0 = Saturday … 6 = Friday."""
    return (day.weekday() + 2) % 7


def default_template(counters: int, *, rural: bool = False) -> WeeklyTemplate:
    """Saturday to Wednesday all day, Thursday morning, Friday closed: how most offices work."""
    seats = max(1, counters)
    full = [DayRule(opens="08:00", closes="16:00" if not rural else "14:00", slot_minutes=30, seats=seats)]
    half = [DayRule(opens="08:00", closes="12:00", slot_minutes=30, seats=seats)]
    return WeeklyTemplate(days={0: full, 1: full, 2: full, 3: full, 4: full, 5: half, 6: []})


_TIME = re.compile(r"(?:[01][0-9]|2[0-3]):[0-5][0-9]|24:00")
"""A time of day as a plan writes it, 00:00 to 24:00 (closing at midnight)."""


@functools.lru_cache(maxsize=2048)
def minute_of(hhmm: str) -> int:
    """Minutes after midnight of a time as plans and slots write it ("HH:MM", to "24:00").
    Kept once worked out: a nearby search asks it thirty times, and parsing had been 3% of it."""
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def slots_for(template: WeeklyTemplate, day: dt.date) -> list[Slot]:
    """The slots of one date, in time order; a slot must end by closing time."""
    slots: list[Slot] = []
    for rule in template.days.get(iranian_weekday(day), []):
        pool = rule.service or SHARED_POOL
        start, end = minute_of(rule.opens), minute_of(rule.closes)
        while start + rule.slot_minutes <= end:
            slots.append(Slot(pool=pool, time=_hhmm(start), seats=rule.seats))
            start += rule.slot_minutes
    slots.sort(key=lambda s: (s.time, s.pool))
    return slots


def pool_for(template: WeeklyTemplate, service_code: str) -> str:
    """The pool a service books from: its own counters if the template has any, else the shared seats."""
    for rules in template.days.values():
        if any(rule.service == service_code for rule in rules):
            return service_code
    return SHARED_POOL


class CapRule(msgspec.Struct, frozen=True):
    """A crowd cap as the plan needs it: where (None = everywhere), when, how much."""

    province_id: int | None
    starts_on: dt.date
    ends_on: dt.date
    percent: int


def effective_cap(*, status: str, office_cap_percent: int, province_id: int, day: dt.date, caps: list[CapRule]) -> int:
    """The share of its seats an office may fill on a day: the tightest of its own
    restriction and every crowd cap over its province on that day."""
    cap = office_cap_percent if status == "restricted" else 100
    for rule in caps:
        if rule.starts_on <= day <= rule.ends_on and rule.province_id in (None, province_id):
            cap = min(cap, rule.percent)
    return max(0, min(100, cap))


def opening_hours(template: WeeklyTemplate) -> dict[int, list[tuple[str, str]]]:
    return {
        weekday: sorted({(rule.opens, rule.closes) for rule in rules})
        for weekday, rules in sorted(template.days.items())
    }


class Calendar:
    """Everything besides the weekly template that decides a date's slots.

    A regulator's closure of the country or the office's province wins over everything:
    it is an order (bad air, mourning), and an office may not open against it. Otherwise
    the office's own override for the date applies (it may open on a holiday, or close on
    a working day); otherwise an official holiday closes it; otherwise the weekly template.
    """

    def __init__(
        self,
        *,
        overrides: dict[tuple[int, dt.date], list[DayRule]] | None = None,
        closures: set[tuple[int | None, dt.date]] | None = None,
        holidays: set[dt.date] | None = None,
    ) -> None:
        self.overrides = overrides or {}
        self.closures = closures or set()
        self.holidays = holidays or set()

    def source(self, *, office_id: int, province_id: int, day: dt.date) -> str:
        if (None, day) in self.closures or (province_id, day) in self.closures:
            return "closure"
        if (office_id, day) in self.overrides:
            return "override"
        if day in self.holidays:
            return "holiday"
        return "template"

    def slots(self, *, office_id: int, province_id: int, template: WeeklyTemplate, day: dt.date) -> list[Slot]:
        source = self.source(office_id=office_id, province_id=province_id, day=day)
        if source == "override":
            return slots_for(WeeklyTemplate(days={iranian_weekday(day): self.overrides[(office_id, day)]}), day)
        if source in ("holiday", "closure"):
            return []
        return slots_for(template, day)


def official_holidays(first: dt.date, last: dt.date) -> set[dt.date]:
    """Iran's official holidays between two dates (lunar ones are estimates for later years)."""
    import holidays

    calendar = holidays.country_holidays("IR", years=range(first.year, last.year + 1))
    return {day for day in calendar if first <= day <= last}


_decoder = msgspec.json.Decoder(WeeklyTemplate)
_rules_decoder = msgspec.json.Decoder(list[DayRule])
_encoder = msgspec.json.Encoder()


def decode_template(raw: str | bytes) -> WeeklyTemplate:
    return _decoder.decode(raw)


def encode_template(template: WeeklyTemplate) -> str:
    return _encoder.encode(template).decode()


def decode_rules(raw: str | bytes) -> list[DayRule]:
    return _rules_decoder.decode(raw)


def encode_rules(rules: list[DayRule]) -> str:
    return _encoder.encode(rules).decode()


def validate_rules(rules: list[DayRule]) -> None:
    """Refuse a plan that cannot be meant: bad times, zero-length slots, absurd seat counts."""
    from app.errors import InvalidInput
    from app.locale import to_persian_digits

    if len(rules) > MAX_RULES_PER_DAY:
        raise InvalidInput(
            "rules",
            f"At most {MAX_RULES_PER_DAY} rules a day.",
            detail_fa=f"حداکثر {to_persian_digits(str(MAX_RULES_PER_DAY))} بازه در روز.",
        )
    for rule in rules:
        if rule.service is not None and (rule.service in ("", SHARED_POOL) or rule.service != rule.service.strip()):
            # "" and "*" would be the shared seats under another name, past the overlap check.
            raise InvalidInput(
                "service", "Name a service code, or none for the shared seats.", detail_fa="کد خدمت درست نیست."
            )
        if not (_TIME.fullmatch(rule.opens) and _TIME.fullmatch(rule.closes)):
            # "08:75" would have read as 09:15.
            raise InvalidInput("opens", "Times look like 08:00.", detail_fa="ساعت باید مانند ۰۸:۰۰ باشد.")
        opens, closes = minute_of(rule.opens), minute_of(rule.closes)
        if not (0 <= opens < closes <= 24 * 60):
            raise InvalidInput(
                "closes",
                "Closing must come after opening, within the day.",
                detail_fa="ساعت پایان باید بعد از ساعت شروع باشد.",
            )
        if not 5 <= rule.slot_minutes <= 240:
            raise InvalidInput(
                "slot_minutes", "A slot is 5 to 240 minutes.", detail_fa="طول هر نوبت باید بین ۵ و ۲۴۰ دقیقه باشد."
            )
        if not 0 <= rule.seats <= 100:
            raise InvalidInput(
                "seats", "Seats per slot must be 0 to 100.", detail_fa="ظرفیت هر نوبت باید بین ۰ و ۱۰۰ باشد."
            )
    # Two rules of one pool over the same hours would make two slots of one time, of which
    # the counters keep one: refused rather than silently merged.
    by_pool: dict[str | None, list[tuple[int, int]]] = {}
    for rule in rules:
        by_pool.setdefault(rule.service, []).append((minute_of(rule.opens), minute_of(rule.closes)))
    for spans in by_pool.values():
        spans.sort()
        if any(later[0] < earlier[1] for earlier, later in pairwise(spans)):
            raise InvalidInput(
                "opens", "Two rules of one service overlap in time.", detail_fa="دو بازهٔ یک خدمت هم‌پوشانی دارند."
            )
