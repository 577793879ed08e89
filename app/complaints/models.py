"""Complaints about offices, and every step of their handling."""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import Boolean, DateTime, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, enum_column


class Category(enum.StrEnum):
    OVERCHARGING = "overcharging"  # above the approved tariff
    FORGERY = "forgery"  # forging or damaging documents
    MOVED_WITHOUT_APPROVAL = "moved_without_approval"
    NO_ACCESSIBILITY = "no_accessibility"  # no facilities for disabled or elderly people
    OPERATOR_DISCRIMINATION = "operator_discrimination"  # between mobile operators
    TARIFF_NOT_DISPLAYED = "tariff_not_displayed"
    CROWDING = "crowding"  # crowding, no appointment system
    RUDE_OR_REFUSED = "rude_or_refused"
    OTHER = "other"


CATEGORY_FA = {
    Category.OVERCHARGING: "دریافت مبلغ بیش از تعرفهٔ مصوب",
    Category.FORGERY: "جعل یا آسیب به مدارک",
    Category.MOVED_WITHOUT_APPROVAL: "جابه‌جایی دفتر بدون مجوز",
    Category.NO_ACCESSIBILITY: "نبود امکانات برای معلولان و سالمندان",
    Category.OPERATOR_DISCRIMINATION: "تبعیض میان اپراتورهای همراه",
    Category.TARIFF_NOT_DISPLAYED: "نصب نبودن تعرفه‌ها",
    Category.CROWDING: "ازدحام یا نبود سامانهٔ نوبت‌دهی",
    Category.RUDE_OR_REFUSED: "برخورد نامناسب یا خودداری از ارائهٔ خدمت",
    Category.OTHER: "سایر",
}


class State(enum.StrEnum):
    """The seven steps of the documents (seed 002), as states."""

    RECEIVED = "received"
    UNDER_REVIEW = "under_review"
    DISMISSED = "dismissed"
    INSPECTOR_ASSIGNED = "inspector_assigned"
    INSPECTION_REPORTED = "inspection_reported"
    VIOLATION_CONFIRMED = "violation_confirmed"
    REFERRED_TO_TRIBUNAL = "referred_to_tribunal"
    VERDICT_ANNOUNCED = "verdict_announced"


OPEN_STATES = tuple(state for state in State if state not in (State.DISMISSED, State.VERDICT_ANNOUNCED))
"""The states of a complaint still awaiting the regulator (the queue's default view)."""

STATE_FA = {
    State.RECEIVED: "دریافت شد",
    State.UNDER_REVIEW: "در حال بررسی کارشناسی",
    State.DISMISSED: "مختومه (تخلفی احراز نشد)",
    State.INSPECTOR_ASSIGNED: "بازرس تعیین شد",
    State.INSPECTION_REPORTED: "گزارش بازرسی ثبت شد",
    State.VIOLATION_CONFIRMED: "تخلف احراز شد",
    State.REFERRED_TO_TRIBUNAL: "به تعزیرات ارجاع شد",
    State.VERDICT_ANNOUNCED: "رأی صادر و اعلام شد",
}

TRANSITIONS: dict[State, tuple[State, ...]] = {
    State.RECEIVED: (State.UNDER_REVIEW,),
    State.UNDER_REVIEW: (State.DISMISSED, State.INSPECTOR_ASSIGNED),
    State.INSPECTOR_ASSIGNED: (State.INSPECTION_REPORTED,),
    State.INSPECTION_REPORTED: (State.DISMISSED, State.VIOLATION_CONFIRMED),
    State.VIOLATION_CONFIRMED: (State.REFERRED_TO_TRIBUNAL,),
    State.REFERRED_TO_TRIBUNAL: (State.VERDICT_ANNOUNCED,),
    State.DISMISSED: (),
    State.VERDICT_ANNOUNCED: (),
}


class Complaint(Base):
    __tablename__ = "complaints"
    __table_args__ = (Index("ix_complaints_office_created", "office_id", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tracking_code: Mapped[str] = mapped_column(String(16), unique=True)
    office_id: Mapped[int] = mapped_column(ForeignKey("offices.id"))
    category: Mapped[Category] = mapped_column(enum_column(Category))
    description: Mapped[str] = mapped_column(Text)
    booking_tracking_code: Mapped[str | None] = mapped_column(String(16))
    mobile: Mapped[str] = mapped_column(String(11), index=True)
    channel: Mapped[str] = mapped_column(String(10))
    state: Mapped[State] = mapped_column(enum_column(State), default=State.RECEIVED, index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    first_response_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    overdue: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    inspector: Mapped[str | None] = mapped_column(String(120))
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class ComplaintStep(Base):
    """One transition of a complaint: who moved it, when, and what they wrote."""

    __tablename__ = "complaint_steps"

    id: Mapped[int] = mapped_column(primary_key=True)
    complaint_id: Mapped[int] = mapped_column(ForeignKey("complaints.id"), index=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    from_state: Mapped[str | None] = mapped_column(String(30))
    to_state: Mapped[str] = mapped_column(String(30))
    actor: Mapped[str] = mapped_column(String(80))
    note: Mapped[str] = mapped_column(Text, default="")
