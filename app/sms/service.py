"""Outbound SMS: a row in the caller's transaction, sent by a worker once it commits."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from functools import partial
from typing import Any, cast

from rq import Queue
from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncSession

from app.clock import Clock
from app.jobs import Jobs, after_commit
from app.sms.models import SmsMessage, SmsStatus

SEND_SMS = "app.sms.tasks.send_sms"
"""One message: its retries, and the sweep's."""
SEND_SMS_BATCH = "app.sms.tasks.send_sms_batch"
"""The messages of one commit (up to SMS_PER_JOB)."""

OUTBOX = cast(Table, SmsMessage.__table__)

SIGN_IN_CODE = "otp"
"""The kind of the messages that carry sign-in codes."""

SMS_PER_JOB = 50
"""Messages one job sends. In a rush the bookings of one group commit go out together:
one enqueue (about ten Redis commands and a pickle) per message was a third of a booking's
CPU; per batch it is nothing, and the worker builds its app once for the lot."""


class Messenger:
    def __init__(self, *, jobs: Jobs, clock: Clock) -> None:
        self.jobs = jobs
        self.clock = clock

    def queue(self, session: AsyncSession, *, to: str, body: str, kind: str) -> str | None:
        """Add the message to the transaction; returns its id (None when there is no phone)."""
        row = self.message(to=to, body=body, kind=kind)
        if row is None:
            return None
        session.add(row)
        queue = self.queue_for(kind)
        after_commit(session, queue.name, row.id, partial(self.send, queue=queue))
        return row.id

    def queue_for(self, kind: str) -> Queue:
        """A sign-in code goes ahead of every other message, its retries too: someone is
        waiting for it with the page open."""
        return self.jobs.codes if kind == SIGN_IN_CODE else self.jobs.sms

    def message(self, *, to: str, body: str, kind: str) -> SmsMessage | None:
        """The outbox row (None when there is no phone); ``send`` its id once it is committed."""
        row = self.outbox_row(to=to, body=body, kind=kind)
        return None if row is None else SmsMessage(**row[1])

    def outbox_row(self, *, to: str, body: str, kind: str) -> tuple[Table, dict[str, Any]] | None:
        """The outbox row as a table and values to insert (app.booking.writer); None when
        there is no phone. The message's id is ``values["id"]``."""
        if not to:
            return None  # a walk-in who gave no mobile
        values = {
            "id": uuid.uuid4().hex,
            "to": to,
            "body": body,
            "kind": kind,
            "status": SmsStatus.QUEUED,
            "attempts": 0,
            # From the clock the sweep compares it with, not the database's: SQLite's own
            # CURRENT_TIMESTAMP is UTC without a zone, and read against Tehran's wall time
            # every message looked two minutes old at once, sent again by each sweep.
            "created_at": self.clock.now(),
        }
        return OUTBOX, values

    def send(self, message_ids: Sequence[str], queue: Queue | None = None) -> None:
        """Have committed messages sent: one job for each ``SMS_PER_JOB`` of them."""
        queue = queue or self.jobs.sms
        for start in range(0, len(message_ids), SMS_PER_JOB):
            chunk = list(message_ids[start : start + SMS_PER_JOB])
            self.jobs.enqueue(queue, SEND_SMS_BATCH, chunk, job_id=f"sms-{chunk[0]}", items=len(chunk))
