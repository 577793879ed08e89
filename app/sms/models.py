"""Every SMS we send or receive is a row: the outbox the workers drain, and the record."""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import DateTime, Index, Integer, String, Text, func, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, enum_column


class SmsStatus(enum.StrEnum):
    QUEUED = "queued"  # committed, waiting for a worker
    SENDING = "sending"  # a worker handed it to the provider; not yet confirmed
    SENT = "sent"  # the provider accepted it
    DELIVERED = "delivered"  # the provider's status callback says the phone has it
    FAILED = "failed"  # gave up, or the provider says undelivered


class SmsMessage(Base):
    __tablename__ = "sms_messages"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # also the RQ job id
    to: Mapped[str] = mapped_column(String(11), index=True)
    body: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(40))  # otp, booking_confirmed, reminder, complaint_step, …
    status: Mapped[SmsStatus] = mapped_column(enum_column(SmsStatus), default=SmsStatus.QUEUED, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    provider_sid: Mapped[str | None] = mapped_column(String(64), index=True)
    error: Mapped[str | None] = mapped_column(String(500))
    # Indexed for the night's purge of old messages (NOBAT_SMS_KEPT_DAYS).
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now(), index=True)
    updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class InboundSms(Base):
    """An SMS a citizen sent us, kept once per provider message id (retried deliveries are one).

    ``answered_at`` is set in the transaction that queues the answer: a delivery the provider
    retries because carrying it out failed (Redis or the database down) finds it unset and
    is carried out again. ``claimed_at`` is when a delivery started carrying it out, so two
    deliveries at once do not both answer it.
    """

    __tablename__ = "sms_inbound"
    # The minute's job looks for those unanswered (``SmsChannel.carry_out_abandoned``): the
    # table keeps every message for NOBAT_SMS_KEPT_DAYS, and the job had read it whole each
    # minute. The night's purge looks for the old ones.
    __table_args__ = (
        Index(
            "ix_sms_inbound_unanswered",
            "received_at",
            sqlite_where=text("answered_at IS NULL"),
            postgresql_where=text("answered_at IS NULL"),
        ),
        Index("ix_sms_inbound_received_at", "received_at"),
    )

    provider_sid: Mapped[str] = mapped_column(String(64), primary_key=True)
    from_mobile: Mapped[str] = mapped_column(String(11), index=True)
    body: Mapped[str] = mapped_column(Text)
    command: Mapped[str] = mapped_column(String(20))
    received_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    claimed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    answered_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class CitizenPhone(Base):
    """The national ID a phone books for by SMS when the message names none."""

    __tablename__ = "citizen_phones"

    mobile: Mapped[str] = mapped_column(String(11), primary_key=True)
    national_id: Mapped[str] = mapped_column(String(10))
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
