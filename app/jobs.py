"""Background jobs: collected during a transaction, enqueued on RQ only after it commits.

A job that a rolled-back transaction asked for never runs; a job for a committed change
is enqueued right after the commit. If that enqueue fails (Redis down for a moment), the
periodic sweep (``app.sms.tasks.sweep``) finds the committed outbox rows and enqueues
them again, so nothing committed is lost.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from redis import Redis
from rq import Queue, Retry
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from workers import queues

log = logging.getLogger(__name__)

_PENDING = "nobat.after_commit"

# Waits between tries of one job: quick at first (a provider hiccup), then backing off.
RETRY_INTERVALS = [5, 15, 60, 300, 900]


def after_commit(session: AsyncSession, action: Callable[[], None]) -> None:
    """Run ``action`` once the session's transaction commits; forget it if it rolls back."""
    session.sync_session.info.setdefault(_PENDING, []).append(action)


@event.listens_for(Session, "after_commit")
def _run_pending(session: Session) -> None:
    for action in session.info.pop(_PENDING, []):
        try:
            action()
        except Exception:
            # The row is committed; the sweep enqueues it again.
            log.exception("could not enqueue a job after commit")


@event.listens_for(Session, "after_rollback")
def _drop_pending(session: Session) -> None:
    session.info.pop(_PENDING, None)


class Jobs:
    """The RQ queues, on the plain Redis that RQ needs (not the capacity cluster)."""

    def __init__(self, redis_url: str) -> None:
        self.redis = Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
        self.sms = Queue(queues.SMS, connection=self.redis)
        self.default = Queue(queues.DEFAULT, connection=self.redis)

    def enqueue(self, queue: Queue, func: str, *args: Any, job_id: str) -> None:
        # A deterministic job id: the same work asked for twice is one job.
        queue.enqueue(
            func,
            *args,
            job_id=job_id,
            retry=Retry(max=len(RETRY_INTERVALS), interval=RETRY_INTERVALS),
            result_ttl=3600,
            failure_ttl=7 * 86400,
        )

    def enqueue_at(self, when: dt.datetime, queue: Queue, func: str, *args: Any, job_id: str) -> None:
        queue.enqueue_at(
            when,
            func,
            *args,
            job_id=job_id,
            retry=Retry(max=len(RETRY_INTERVALS), interval=RETRY_INTERVALS),
            result_ttl=3600,
            failure_ttl=7 * 86400,
        )

    def close(self) -> None:
        self.redis.close()
