"""What the regulator and the policy did to offices: restrictions, blocks, lifts, appeals, fines."""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import BigInteger, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, enum_column


class ActionKind(enum.StrEnum):
    RESTRICT = "restrict"
    BLOCK = "block"


class OfficeAction(Base):
    """A restriction or a block, from when it began until it was lifted."""

    __tablename__ = "office_actions"

    id: Mapped[int] = mapped_column(primary_key=True)
    office_id: Mapped[int] = mapped_column(ForeignKey("offices.id"), index=True)
    kind: Mapped[ActionKind] = mapped_column(enum_column(ActionKind))
    reason: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(20))  # policy or regulator
    actor: Mapped[str] = mapped_column(String(80))
    cap_percent: Mapped[int] = mapped_column(Integer, default=100)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    lifted_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    lifted_by: Mapped[str | None] = mapped_column(String(80))
    lift_reason: Mapped[str | None] = mapped_column(Text)
    bookings_moved: Mapped[int] = mapped_column(Integer, default=0)
    bookings_cancelled: Mapped[int] = mapped_column(Integer, default=0)


class AppealOutcome(enum.StrEnum):
    PENDING = "pending"
    UPHELD = "upheld"  # the restriction stands
    OVERTURNED = "overturned"  # the restriction is lifted


class Appeal(Base):
    __tablename__ = "appeals"

    id: Mapped[int] = mapped_column(primary_key=True)
    action_id: Mapped[int] = mapped_column(ForeignKey("office_actions.id"), index=True)
    office_id: Mapped[int] = mapped_column(ForeignKey("offices.id"), index=True)
    text: Mapped[str] = mapped_column(Text)
    filed_by: Mapped[str] = mapped_column(String(80))
    filed_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    outcome: Mapped[AppealOutcome] = mapped_column(enum_column(AppealOutcome), default=AppealOutcome.PENDING)
    decided_by: Mapped[str | None] = mapped_column(String(80))
    decided_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    decision_note: Mapped[str | None] = mapped_column(Text)


class Fine(Base):
    __tablename__ = "fines"

    id: Mapped[int] = mapped_column(primary_key=True)
    office_id: Mapped[int] = mapped_column(ForeignKey("offices.id"), index=True)
    complaint_id: Mapped[int] = mapped_column(ForeignKey("complaints.id"))
    obligation: Mapped[str] = mapped_column(String(40))  # the complaint category violated
    year: Mapped[int] = mapped_column(Integer)  # Jalali year
    amount_rials: Mapped[int] = mapped_column(BigInteger)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class OfficeNotice(Base):
    """A message to an office's staff (restricted, lifted, appeal decided), shown in its console."""

    __tablename__ = "office_notices"

    id: Mapped[int] = mapped_column(primary_key=True)
    office_id: Mapped[int] = mapped_column(ForeignKey("offices.id"), index=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    text: Mapped[str] = mapped_column(Text)
