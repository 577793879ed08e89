"""Outbound SMS: a row in the caller's transaction, sent by a worker once it commits."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from functools import partial

from sqlalchemy.ext.asyncio import AsyncSession

from app.jobs import Jobs, after_commit
from app.sms.models import SmsMessage, SmsStatus

SEND_SMS = "app.sms.tasks.send_sms"
REMIND = "app.sms.tasks.remind"


class Messenger:
    def __init__(self, *, jobs: Jobs, tz: dt.tzinfo, evening_hour: int) -> None:
        self.jobs = jobs
        self.tz = tz
        self.evening_hour = evening_hour

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

    def schedule_reminders(
        self, session: AsyncSession, *, tracking_code: str, day: dt.date, time: str, now: dt.datetime
    ) -> None:
        for action in self.reminders(tracking_code=tracking_code, day=day, time=time, now=now):
            after_commit(session, action)

    def reminders(self, *, tracking_code: str, day: dt.date, time: str, now: dt.datetime) -> list[Callable[[], None]]:
        """The evening before and an hour before. Each job re-reads the booking and does
        nothing if it was cancelled or moved since (a move schedules its own)."""
        start = dt.datetime.combine(day, dt.time.fromisoformat(time), tzinfo=self.tz)
        evening = dt.datetime.combine(day - dt.timedelta(days=1), dt.time(self.evening_hour), tzinfo=self.tz)
        actions: list[Callable[[], None]] = []
        for kind, when in (("evening", evening), ("hour", start - dt.timedelta(hours=1))):
            if when > now:
                job_id = f"remind-{tracking_code}-{kind}-{day.isoformat()}-{time.replace(':', '')}"
                actions.append(partial(self._enqueue_reminder, when, tracking_code, kind, day, time, job_id))
        return actions

    def _enqueue_reminder(
        self, when: dt.datetime, tracking_code: str, kind: str, day: dt.date, time: str, job_id: str
    ) -> None:
        self.jobs.enqueue_at(when, self.jobs.sms, REMIND, tracking_code, kind, day.isoformat(), time, job_id=job_id)
