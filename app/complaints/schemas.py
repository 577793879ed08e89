from __future__ import annotations

import msgspec


class ComplaintCreate(msgspec.Struct, forbid_unknown_fields=True):
    office_code: str
    category: str
    description: str
    booking_tracking_code: str | None = None


class StepOut(msgspec.Struct):
    at: str
    state: str
    state_fa: str
    note: str


class ComplaintOut(msgspec.Struct):
    tracking_code: str
    office_code: str
    office_name_fa: str
    category: str
    category_fa: str
    description: str
    state: str
    state_fa: str
    created_at: str
    overdue: bool
    steps: list[StepOut]


class TransitionIn(msgspec.Struct, forbid_unknown_fields=True):
    to: str
    note: str = ""
    inspector: str | None = None
    category: str | None = None  # the regulator's correction, up to the confirmation


class QueueItem(msgspec.Struct):
    tracking_code: str
    office_code: str
    office_name_fa: str
    province_fa: str
    category: str
    state: str
    created_at: str
    overdue: bool
    next_states: list[str]
