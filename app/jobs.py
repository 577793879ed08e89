"""Background jobs: collected during a transaction, enqueued on RQ only after it commits.

A job that a rolled-back transaction asked for never runs; a job for a committed change
is handed over right after the commit (messages to a thread that enqueues them:
``app.sms.service.Messenger.hand_over``). If that enqueue fails (Redis down for a moment),
the periodic sweep (``app.sms.tasks.sweep``) finds the committed outbox rows and enqueues
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

from app.settings import SEND_JOB_TIMEOUT
from workers import queues

log = logging.getLogger(__name__)

_PENDING = "nobat.after_commit"

# Waits between tries of one job: quick at first (a provider hiccup), then backing off.
# RQ's Retry uses them for a job that crashed; the SMS send job schedules its own next
# try with ``backoff`` so that NOBAT_SMS_MAX_ATTEMPTS, not this list, says how many tries.
RETRY_INTERVALS = [5, 15, 60, 300, 900]


def backoff(attempts: int) -> int:
    """Seconds to wait before the next try, after ``attempts`` failed ones (the last wait repeats)."""
    return RETRY_INTERVALS[min(max(attempts, 1), len(RETRY_INTERVALS)) - 1]


def after_commit(session: AsyncSession, key: str, item: Any, action: Callable[[list[Any]], None]) -> None:
    """Run ``action(items)`` once the session's transaction commits, with every ``item`` added
    under ``key`` in that transaction; forget them if it rolls back. (Thirty messages queued
    by one clerk's cut are one job, not thirty.)"""
    pending: list[_Collected] = session.sync_session.info.setdefault(_PENDING, [])
    for entry in pending:
        if entry.key == key:
            entry.items.append(item)
            return
    pending.append(_Collected(key, [item], action))


class _Collected:
    def __init__(self, key: str, items: list[Any], action: Callable[[list[Any]], None]) -> None:
        self.key, self.items, self.action = key, items, action

    def __call__(self) -> None:
        self.action(self.items)


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
        self.codes = Queue(queues.CODES, connection=self.redis)
        self.sms = Queue(queues.SMS, connection=self.redis)
        self.default = Queue(queues.DEFAULT, connection=self.redis)

    def enqueue(self, queue: Queue, func: str, *args: Any, job_id: str, items: int = 1) -> None:
        """``items``: how many messages the job carries (its time limit grows with them)."""
        # A deterministic job id: the same work asked for twice is one job.
        options = self._options(queue)
        if options["job_timeout"]:
            options["job_timeout"] *= items
        queue.enqueue(func, *args, job_id=job_id, **options)

    def enqueue_at(self, when: dt.datetime, queue: Queue, func: str, *args: Any, job_id: str) -> None:
        queue.enqueue_at(when, func, *args, job_id=job_id, **self._options(queue))

    @staticmethod
    def _options(queue: Queue) -> dict[str, Any]:
        return {
            "retry": Retry(max=len(RETRY_INTERVALS), interval=RETRY_INTERVALS),
            "job_timeout": SEND_JOB_TIMEOUT if queue.name in (queues.CODES, queues.SMS) else None,
            "result_ttl": 3600,
            "failure_ttl": 7 * 86400,
        }

    def close(self) -> None:
        self.redis.close()
