"""Accounts of the people who run the network (office staff, the regulator, the guild) and the
audit log of what they changed."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import Boolean, CheckConstraint, DateTime, ForeignKey, Index, Integer, String, Text, event
from sqlalchemy.orm import Mapped, mapped_column

from app.db import WIDE_ID, Base, enum_column


class StaffRole(enum.StrEnum):
    OFFICE_STAFF = "office_staff"  # کارکنان دفتر: one office's day, check-ins, capacity
    REGULATOR = "regulator"  # سازمان تنظیم مقررات: every office, restrictions, crowd caps
    GUILD = "guild"  # کانون/اتحادیهٔ دفاتر: the guild's view of the network


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class StaffAccount(Base):
    __tablename__ = "staff_accounts"
    __table_args__ = (
        # The record backs up the service's rules: names are stored lower-case, and an
        # account belongs to an office exactly when it is office staff.
        CheckConstraint("username = lower(username)", name="ck_staff_username_lower"),
        CheckConstraint("(role = 'office_staff') = (office_id IS NOT NULL)", name="ck_staff_office_iff_office_staff"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(40), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))  # argon2id, parameters inside
    role: Mapped[StaffRole] = mapped_column(enum_column(StaffRole))
    office_id: Mapped[int | None] = mapped_column(ForeignKey("offices.id"), index=True)
    failed_attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Stored in UTC (SQLite drops the offset, so every writer must agree on one).
    locked_until: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # A Python-side default: a server default would need a reload after insert (lazy
    # loading is not allowed on an async session).
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # When an operator last ended the account's sessions (``staff reset-password``, ``staff
    # disable``): one opened before ends, for good. Not the hash, which a sign-in also writes
    # when argon2's parameters change.
    sessions_ended_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class AuditEntry(Base):
    """One change a staff member, the regulator or the guild made; append-only.

    ``before`` and ``after`` are the msgspec JSON of the thing changed. ``office_id`` is a plain
    column, not a foreign key: the log must outlive whatever it talks about. ``actor_role``
    is a plain string so that jobs (``system``) can write here too.
    """

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_office_at", "office_id", "at"),
        Index("ix_audit_actor_at", "actor", "at"),
    )

    id: Mapped[int] = mapped_column(WIDE_ID, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))  # UTC
    actor: Mapped[str] = mapped_column(String(40))
    actor_role: Mapped[str] = mapped_column(String(20))
    office_id: Mapped[int | None] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(60))
    target: Mapped[str] = mapped_column(String(200))
    before: Mapped[str | None] = mapped_column(Text)
    after: Mapped[str | None] = mapped_column(Text)


@event.listens_for(AuditEntry, "before_update")
@event.listens_for(AuditEntry, "before_delete")
def _append_only(_mapper: Any, _connection: Any, entry: AuditEntry) -> None:
    # A guard against an ORM flush changing history by mistake; in production the database
    # role the app uses should also lack UPDATE and DELETE on this table.
    raise RuntimeError(f"the audit log is append-only (entry {entry.id})")
