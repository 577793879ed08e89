"""How long the SMS record keeps messages: NOBAT_SMS_KEPT_DAYS, then the night deletes them.

A message's body carries what it was about: a booking's tracking code, a national ID sent
to book, a complaint's words. Nothing reads a message once it is answered or delivered
(a provider's late status callback aside, days at most); kept for ever, they were a
growing store of who went where, and a growing table for every query on it.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from app.sms.models import InboundSms, SmsMessage

PURGE_BATCH = 5_000
"""Rows one transaction deletes: the first night after an upgrade meets every message ever
kept, and one statement over all of them would hold its locks for minutes."""


async def purge_before(session: AsyncSession, before: dt.datetime) -> int:
    """Delete the messages sent and received before ``before``; how many."""
    sent = await _purge(session, SmsMessage.id, SmsMessage.created_at, before)
    return sent + await _purge(session, InboundSms.provider_sid, InboundSms.received_at, before)


async def _purge(
    session: AsyncSession,
    key: InstrumentedAttribute[str],
    made: InstrumentedAttribute[dt.datetime],
    before: dt.datetime,
) -> int:
    purged = 0
    while True:
        batch = select(key).where(made < before).limit(PURGE_BATCH).scalar_subquery()
        deleted = await session.execute(delete(key.class_).where(key.in_(batch)))
        await session.commit()
        purged += deleted.rowcount  # type: ignore[attr-defined]
        if deleted.rowcount < PURGE_BATCH:  # type: ignore[attr-defined]
            return purged
