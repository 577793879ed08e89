"""Bookings: the system of record for every seat a citizen holds."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any, cast

import msgspec
from sqlalchemy import Date, DateTime, ForeignKey, Index, String, Table, UniqueConstraint, func, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import WIDE_ID, Base, enum_column
from app.offices.models import Office


class BookingStatus(enum.StrEnum):
    WAITLISTED = "waitlisted"  # queued for the day's next free seat; holds no seat yet
    BOOKED = "booked"
    CHECKED_IN = "checked_in"
    SERVED = "served"
    NO_SHOW = "no_show"
    CANCELLED = "cancelled"


SEAT_STATUSES = (BookingStatus.BOOKED, BookingStatus.CHECKED_IN)
"""A booking in one of these holds a seat."""
ACTIVE_STATUSES = (BookingStatus.WAITLISTED, *SEAT_STATUSES)
"""A booking in one of these counts against the citizen's limits (a waitlist entry too)."""


class Channel(enum.StrEnum):
    WEB = "web"
    SMS = "sms"
    WALK_IN = "walk_in"


class Booking(Base):
    __tablename__ = "bookings"
    __table_args__ = (
        UniqueConstraint("mobile", "idempotency_key"),
        # The last line of defence for "one active booking per national ID per service per
        # day": Redis enforces it first, this index makes it hold even if Redis is wrong.
        Index(
            "uq_active_booking_per_service_day",
            "national_id",
            "service_code",
            "date",
            unique=True,
            sqlite_where=text("status IN ('waitlisted', 'booked', 'checked_in')"),
            postgresql_where=text("status IN ('waitlisted', 'booked', 'checked_in')"),
        ),
        Index("ix_bookings_office_day", "office_id", "date", "status"),
        Index("ix_bookings_national_id", "national_id", "status"),
        Index("ix_bookings_day", "date", "status", "slot_time"),  # the reminders' scans
    )

    id: Mapped[int] = mapped_column(WIDE_ID, primary_key=True)
    tracking_code: Mapped[str] = mapped_column(String(16), unique=True)
    office_id: Mapped[int] = mapped_column(ForeignKey("offices.id"))
    service_code: Mapped[str] = mapped_column(ForeignKey("services.code"))
    national_id: Mapped[str] = mapped_column(String(10))
    mobile: Mapped[str] = mapped_column(String(11))
    date: Mapped[dt.date] = mapped_column(Date)
    slot_time: Mapped[str] = mapped_column(String(5))
    pool: Mapped[str] = mapped_column(String(8))
    status: Mapped[BookingStatus] = mapped_column(enum_column(BookingStatus), default=BookingStatus.BOOKED)
    channel: Mapped[Channel] = mapped_column(enum_column(Channel), default=Channel.WEB)
    idempotency_key: Mapped[str | None] = mapped_column(String(80))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    cancelled_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # When each reminder was queued (app.booking.reminders); cleared when the booking moves.
    reminded_evening_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    reminded_hour_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # The office it was made at, once an office has moved it (app.booking.relocation): a retry
    # of the request that made it is answered with it where it is now, not refused as another
    # request. (No foreign key: it is history, and offices are not deleted.)
    moved_from_office_id: Mapped[int | None] = mapped_column()
    # When a place in line was given its seat (app.booking.service._promote): given one just
    # before its slot, the citizen may not get there, and their no-show does not count.
    promoted_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))

    office: Mapped[Office] = relationship(lazy="raise")


class NewBooking(msgspec.Struct, frozen=True):
    """A booking about to be recorded: the row's values, without the ORM's bookkeeping
    (app.booking.writer inserts it with the rows of concurrent bookings)."""

    tracking_code: str
    office_id: int
    service_code: str
    national_id: str
    mobile: str
    date: dt.date
    slot_time: str
    pool: str
    status: BookingStatus
    channel: Channel
    idempotency_key: str | None
    created_at: dt.datetime

    def row(self) -> tuple[Table, dict[str, Any]]:
        return cast(Table, Booking.__table__), msgspec.structs.asdict(self)


class Suspension(Base):
    """A national ID barred from web and SMS booking until a date, after repeated no-shows."""

    __tablename__ = "suspensions"

    id: Mapped[int] = mapped_column(primary_key=True)
    national_id: Mapped[str] = mapped_column(String(10), index=True)
    until: Mapped[dt.date] = mapped_column(Date)
    reason: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # The last day whose no-shows it counted: no-shows after it count towards the next. (The
    # night's close counts up to yesterday; a clerk's mark, today.) None: made before it was kept.
    counted_to: Mapped[dt.date | None] = mapped_column(Date)
