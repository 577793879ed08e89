"""Outbound SMS: a row in the caller's transaction, sent by a worker once it commits."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from functools import partial

from sqlalchemy.ext.asyncio import AsyncSession

from app.jobs import Jobs, after_commit
from app.sms.models import SmsMessage, SmsStatus

SEND_SMS = "app.sms.tasks.send_sms"


class Messenger:
    def __init__(self, *, jobs: Jobs) -> None:
        self.jobs = jobs

    def queue(self, session: AsyncSession, *, to: str, body: str, kind: str) -> str | None:
        """Add the message to the transaction; returns its id (None when there is no phone)."""
        prepared = self.message(to=to, body=body, kind=kind)
        if prepared is None:
            return None
        row, send = prepared
        session.add(row)
        after_commit(session, send)
        return row.id

    def message(self, *, to: str, body: str, kind: str) -> tuple[SmsMessage, Callable[[], None]] | None:
        """The outbox row, and the enqueue to run once it is committed (None when there is no phone)."""
        if not to:
            return None  # a walk-in who gave no mobile
        message_id = uuid.uuid4().hex
        row = SmsMessage(id=message_id, to=to, body=body, kind=kind, status=SmsStatus.QUEUED, attempts=0)
        return row, partial(self.jobs.enqueue, self.jobs.sms, SEND_SMS, message_id, job_id=f"sms-{message_id}")
