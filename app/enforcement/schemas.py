from __future__ import annotations

import msgspec


class ActionIn(msgspec.Struct, forbid_unknown_fields=True):
    reason: str
    cap_percent: int | None = None  # restrictions only; default: the policy's


class LiftIn(msgspec.Struct, forbid_unknown_fields=True):
    reason: str


class AppealIn(msgspec.Struct, forbid_unknown_fields=True):
    action_id: int
    text: str


class AppealDecisionIn(msgspec.Struct, forbid_unknown_fields=True):
    outcome: str  # upheld or overturned
    note: str = ""


class ActionOut(msgspec.Struct):
    id: int
    office_code: str
    kind: str
    reason: str
    source: str
    actor: str
    cap_percent: int
    started_at: str
    lifted_at: str | None
    lift_reason: str | None
    bookings_moved: int
    bookings_cancelled: int


class AppealOut(msgspec.Struct):
    id: int
    action_id: int
    office_code: str
    text: str
    filed_by: str
    filed_at: str
    outcome: str
    decided_by: str | None
    decision_note: str | None


class WatchedOffice(msgspec.Struct):
    """One restricted or blocked office, as the guild and the regulator watch it."""

    code: str
    name_fa: str
    province_fa: str
    province_code: str
    city_fa: str
    status: str
    since: str | None
    reason: str | None
    source: str | None
    cap_percent: int
    complaints_by_category: dict[str, int]
    complaints_total: int
    bookings_moved: int
    bookings_cancelled: int
    appeal: str | None  # pending, upheld, overturned, or None


class NoticeOut(msgspec.Struct):
    at: str
    text: str
