"""Delivery status from Twilio's status callbacks, written to the message it is about.

A callback may come while no message of ours has its id yet: Twilio can call back "sent", even
"delivered", before its answer to the send reaches the worker, and a retry may find at Twilio,
minutes later, a message an earlier try handed over without writing its id down. Twilio does
not call back again (nor does it retry a callback that failed, unless told to): one that finds
no message is kept in Redis, and the worker applies it once it has written the id down.
"""

from __future__ import annotations

import datetime as dt
import logging
from contextlib import suppress

from redis.asyncio import Redis
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from app.capacity.keys import NAMESPACE
from app.capacity.scripts import as_text
from app.sms.models import SmsMessage, SmsStatus

log = logging.getLogger(__name__)

FINAL = (SmsStatus.DELIVERED, SmsStatus.FAILED)
"""Twilio's final statuses: nothing comes after them."""

KEPT_SECONDS = 86_400
"""How long a callback waits for its message's id: longer than any try's last retry, or the
sweep, takes to write it down."""


def _kept(sid: str) -> str:
    return f"{NAMESPACE}:sms:status-before-id:{sid}"


async def report(
    session: AsyncSession, redis: Redis, *, sid: str, status: SmsStatus, error: str | None, now: dt.datetime
) -> None:
    """Write a callback's status to the message with Twilio's id ``sid``; keep it for the
    worker if no message has that id yet."""
    if await _write(session, sid, status, error, now):
        return
    # No message has the id yet (or it is final already, and then what is kept is never
    # read). Kept before the second look: the worker commits the id, then reads what is
    # kept, so whichever of the two comes second finds the other's.
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hset(_kept(sid), status.value, error or "")
        pipe.expire(_kept(sid), KEPT_SECONDS)
        await pipe.execute()
    await _write(session, sid, status, error, now)


async def apply_kept(session: AsyncSession, redis: Redis, sid: str, now: dt.datetime) -> None:
    """After the worker has committed Twilio's id ``sid`` on a message: apply the callbacks
    that came before. Best effort: the message is sent whatever happens here."""
    try:
        kept = {SmsStatus(as_text(name)): as_text(code) for name, code in (await redis.hgetall(_kept(sid))).items()}
        if kept:
            # The latest state kept: a final one over "sent".
            status = max(kept, key=lambda reported: reported in FINAL)
            await _write(session, sid, status, kept[status] or None, now)
            await session.commit()
    except Exception:
        log.warning("could not apply the status Twilio reported for %s before it was written down", sid, exc_info=True)
        with suppress(Exception):
            await session.rollback()


async def _write(session: AsyncSession, sid: str, status: SmsStatus, error: str | None, now: dt.datetime) -> bool:
    """Whether a message has the id and took the status. Callbacks may come out of order: a
    late "sent" must not undo "delivered" or "failed". Checked by the database in the same
    statement, so a callback handled at the same moment as another cannot slip in between."""
    result = await session.execute(
        update(SmsMessage)
        .where(SmsMessage.provider_sid == sid, SmsMessage.status.not_in(FINAL))
        .values(status=status, error=error, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
