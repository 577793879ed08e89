"""An office's capacity plan as kept in the record; Redis holds its materialised form."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    ColumnElement,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    SQLColumnExpression,
    String,
    Text,
    func,
    select,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base


class CapacityTemplate(Base):
    """One office's weekly template, stored as the msgspec-encoded ``WeeklyTemplate``.

    A JSON column rather than a row per rule: the template is always read and written
    whole, and 17,000 offices load in one insert instead of a hundred thousand.
    """

    __tablename__ = "capacity_templates"

    office_id: Mapped[int] = mapped_column(ForeignKey("offices.id"), primary_key=True)
    template: Mapped[str] = mapped_column(Text)


class CrowdCap(Base):
    """A regulator's cap on new bookings: every office of a province (or of the country) may
    fill at most ``percent`` of its normal seats on the dates given, as epidemic directives
    ordered. Bookings made before the cap stand."""

    __tablename__ = "crowd_caps"

    id: Mapped[int] = mapped_column(primary_key=True)
    province_id: Mapped[int | None] = mapped_column(ForeignKey("provinces.id"))  # None: the whole country
    starts_on: Mapped[dt.date] = mapped_column(Date)
    ends_on: Mapped[dt.date] = mapped_column(Date)
    percent: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(500))
    created_by: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    lifted_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


# One cap in force per province (0: the whole country), dates, percent and reason. Checked
# before the insert too, for a clear answer; the index holds when two identical orders come
# at once (a retry of a national cap, whose answer takes its time).
Index(
    "uq_crowd_caps_same_order",
    func.coalesce(CrowdCap.province_id, 0),
    CrowdCap.starts_on,
    CrowdCap.ends_on,
    CrowdCap.percent,
    CrowdCap.reason,
    unique=True,
    sqlite_where=text("lifted_at IS NULL"),
    postgresql_where=text("lifted_at IS NULL"),
)


class CapacityOverride(Base):
    """One office's plan for one date, in place of its weekly template (no rules: closed)."""

    __tablename__ = "capacity_overrides"

    office_id: Mapped[int] = mapped_column(ForeignKey("offices.id"), primary_key=True)
    date: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    rules: Mapped[str] = mapped_column(Text)  # msgspec-encoded list[DayRule]
    reason: Mapped[str] = mapped_column(String(500), default="")


def opened_by_own_plan(office_id: SQLColumnExpression[int], day: SQLColumnExpression[dt.date]) -> ColumnElement[bool]:
    """The office has a plan of its own for the day that opens it (an override with rules, on
    a holiday say); an empty one closes it, as the clerk who wrote it meant."""
    return (
        select(CapacityOverride.office_id)
        .where(CapacityOverride.office_id == office_id, CapacityOverride.date == day, CapacityOverride.rules != "[]")
        .correlate_except(CapacityOverride)
        .exists()
    )


class Closure(Base):
    """A regulator's ad-hoc closure of every office of a province (or of the country) on a date."""

    __tablename__ = "closures"

    id: Mapped[int] = mapped_column(primary_key=True)
    date: Mapped[dt.date] = mapped_column(Date, index=True)
    province_id: Mapped[int | None] = mapped_column(ForeignKey("provinces.id"))
    reason: Mapped[str] = mapped_column(String(500))
    created_by: Mapped[str] = mapped_column(String(80))


# One order per day, province (0: the whole country) and reason. Checked before the insert
# too, for a clear answer; the index is what holds when two identical orders come at once.
Index(
    "uq_closures_same_order",
    Closure.date,
    func.coalesce(Closure.province_id, 0),
    Closure.reason,
    unique=True,
)
