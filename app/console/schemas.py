from __future__ import annotations

import msgspec

from app.capacity.plan import DayRule
from app.locale import normalize_digits


class DayRuleIn(msgspec.Struct, forbid_unknown_fields=True):
    opens: str
    closes: str
    slot_minutes: int = 30
    seats: int = 2
    service: str | None = None

    def to_rule(self) -> DayRule:
        # Times and codes typed with Persian or Arabic-Indic digits, as the office pages take them.
        return DayRule(
            opens=normalize_digits(self.opens).strip(),
            closes=normalize_digits(self.closes).strip(),
            slot_minutes=self.slot_minutes,
            seats=self.seats,
            service=None if self.service is None else normalize_digits(self.service).strip(),
        )


class TemplateIn(msgspec.Struct, forbid_unknown_fields=True):
    """Rules per weekday, keys "0" (Saturday) to "6" (Friday); a missing day is closed."""

    days: dict[str, list[DayRuleIn]]


class OverrideIn(msgspec.Struct, forbid_unknown_fields=True):
    """The plan for one date; no rules closes the office that day."""

    rules: list[DayRuleIn] = []
    reason: str = ""


class MovedBooking(msgspec.Struct):
    tracking_code: str
    moved: bool  # False: no seat could be found the same day; cancelled and told by SMS
    office_code: str | None
    slot: str | None


class CapacityChange(msgspec.Struct):
    office_code: str
    days_changed: int
    moved: list[MovedBooking]


class DayPlanOut(msgspec.Struct):
    date: str
    date_fa: str
    source: str  # template, override, holiday or closure
    slots: int
    seats: int
    booked: int


class FarOverride(msgspec.Struct):
    """A day beyond the horizon its office has planned differently."""

    date: str
    date_fa: str
    closed: bool
    reason: str


class QueueEntry(msgspec.Struct):
    tracking_code: str
    slot: str
    service_code: str
    service_name_fa: str
    status: str
    channel: str
    national_id: str  # masked: the clerk checks the ID card, not the screen


class WalkInIn(msgspec.Struct, forbid_unknown_fields=True):
    national_id: str
    service_code: str
    mobile: str | None = None


class WaitingIn(msgspec.Struct, forbid_unknown_fields=True):
    waiting: int
