"""Outbound SMS: a row in the caller's transaction, sent by a worker once it commits."""

from __future__ import annotations

import logging
import queue as queues
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, cast

from rq import Queue
from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncSession

from app.clock import Clock
from app.jobs import Jobs, after_commit
from app.sms.models import SmsMessage, SmsStatus

log = logging.getLogger(__name__)

SEND_SMS = "app.sms.tasks.send_sms"
"""One message: its retries, and the sweep's."""
SEND_SMS_BATCH = "app.sms.tasks.send_sms_batch"
"""The messages of one commit (up to SMS_PER_JOB)."""

OUTBOX = cast(Table, SmsMessage.__table__)

SIGN_IN_CODE = "otp"
"""The kind of the messages that carry a sign-in code asked for on a page or the API."""
TEXTED_SIGN_IN_CODE = "otp_texted"
"""The kind of those that carry a code asked for by a text (``ورود``), which lives longer."""
SIGN_IN_CODES = (SIGN_IN_CODE, TEXTED_SIGN_IN_CODE)

SMS_PER_JOB = 50
"""Messages one job sends. In a rush the bookings of one group commit go out together:
one enqueue (about ten Redis commands and a pickle) per message was a third of a booking's
CPU; per batch it is nothing, and the worker builds its app once for the lot."""

GATHER_SECONDS = 0.02
"""How long a handover thread lets a moment's commits gather before it enqueues them."""


class Messenger:
    def __init__(self, *, jobs: Jobs, clock: Clock) -> None:
        self.jobs = jobs
        self.clock = clock
        self._outboxes: dict[str, Outbox] = {}  # by queue
        self._outboxes_lock = threading.Lock()
        self._closed = False

    def queue(self, session: AsyncSession, *, to: str, body: str, kind: str) -> str | None:
        """Add the message to the transaction; returns its id (None when there is no phone)."""
        row = self.message(to=to, body=body, kind=kind)
        if row is None:
            return None
        session.add(row)
        queue = self.queue_for(kind)
        after_commit(session, queue.name, row.id, partial(self.hand_over, queue=queue))
        return row.id

    def queue_for(self, kind: str) -> Queue:
        """A sign-in code goes ahead of every other message, its retries too: someone is
        waiting for it with the page open."""
        return self.jobs.codes if kind in SIGN_IN_CODES else self.jobs.sms

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

    def hand_over(self, message_ids: Sequence[str], queue: Queue | None = None) -> None:
        """Have committed messages sent, without waiting: a thread of the queue's enqueues
        them. A commit runs on the event loop, and RQ's Redis is a blocking client (a 2 s
        timeout): a slow or vanished one had stalled every request of the instance for it,
        at each sign-in. A message whose enqueue is lost (Redis away, the process killed) is
        found by the sweep: its outbox row is committed."""
        queue = queue or self.jobs.sms
        with self._outboxes_lock:  # the event loop's, and ``close`` on a thread of its own
            outbox = self._outboxes.get(queue.name)
            if outbox is None:
                outbox = Outbox(partial(self.send, queue=queue), name=f"sms-{queue.name}")
                self._outboxes[queue.name] = outbox
                if self._closed:
                    outbox.close()  # sends on the caller's thread: no thread left running
        outbox.put(message_ids)

    def unsent(self) -> int:
        """Messages handed over and not yet through an enqueue."""
        return sum(outbox.unsent for outbox in self._each_outbox())

    def wait_sent(self, timeout: float = 10) -> bool:
        """Wait until every message handed over has been through an enqueue (tests, a job's
        end, shutdown)."""
        deadline = time.monotonic() + timeout
        return all(outbox.wait(deadline - time.monotonic()) for outbox in self._each_outbox())

    def close(self) -> None:
        """Enqueue what was handed over (a few seconds at most), then stop the threads. A
        message handed over after (a batch that was committing) is enqueued by its caller."""
        with self._outboxes_lock:
            self._closed = True
        for outbox in self._each_outbox():
            outbox.close()

    def _each_outbox(self) -> list[Outbox]:
        with self._outboxes_lock:
            return list(self._outboxes.values())

    def send(self, message_ids: Sequence[str], queue: Queue | None = None) -> None:
        """Have committed messages sent: one job for each ``SMS_PER_JOB`` of them."""
        queue = queue or self.jobs.sms
        for start in range(0, len(message_ids), SMS_PER_JOB):
            chunk = list(message_ids[start : start + SMS_PER_JOB])
            self.jobs.enqueue(queue, SEND_SMS_BATCH, chunk, job_id=f"sms-{chunk[0]}", items=len(chunk))


class Outbox:
    """Hands committed messages to ``send`` on a thread of its own, in as few calls as it can:
    whatever piled up while the last call was under way goes in the next one. (One RQ
    enqueue per message, on the event loop, had taken a third of the CPU of the whole
    booking path.) Closed, it sends what is put in on the caller's thread: a batch still
    committing as the instance stops is not left behind the thread's end."""

    def __init__(self, send: Callable[[Sequence[str]], None], *, name: str) -> None:
        self._send = send
        self._name = name
        self._due: queues.SimpleQueue[list[str] | None] = queues.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._unsent = 0  # messages put in and not yet through ``send``
        self._sent = threading.Condition()  # guards the three above

    @property
    def unsent(self) -> int:
        return self._unsent

    def put(self, message_ids: Sequence[str]) -> None:
        if not message_ids:
            return
        with self._sent:
            if not self._closed:
                if self._thread is None:
                    thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                    thread.start()  # one that cannot start raises here, and the next put tries again
                    self._thread = thread
                self._unsent += len(message_ids)
                self._due.put(list(message_ids))
                return
        # Closed: at shutdown only (a batch that was committing), so RQ's blocking enqueue on
        # the caller's thread, the event loop's most often, holds up nothing else.
        self._send_now(list(message_ids))

    def wait(self, timeout: float) -> bool:
        """Wait until every message put in has been through ``send``."""
        with self._sent:
            return self._sent.wait_for(lambda: self._unsent == 0, max(timeout, 0))

    def close(self, timeout: float = 5) -> None:
        """Send what was put in (within ``timeout``), then stop the thread."""
        with self._sent:
            self._closed = True
            thread = self._thread
            if thread is not None:
                self._due.put(None)  # after everything put in: none can come after it
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        closing = False
        while not closing:
            ids = self._due.get()
            if ids is None:
                return
            # Let a moment's commits gather (a few hundredths of a second on an SMS that takes
            # seconds to arrive): in a rush that is one enqueue for dozens of messages.
            time.sleep(GATHER_SECONDS)
            while not self._due.empty():
                more = self._due.get_nowait()
                if more is None:
                    closing = True
                    break
                ids += more
            self._send_now(ids)
            with self._sent:
                self._unsent -= len(ids)
                self._sent.notify_all()

    def _send_now(self, ids: list[str]) -> None:
        try:
            self._send(ids)
        except Exception:
            # The rows are committed; the sweep enqueues whatever this failed to.
            log.exception("could not enqueue committed messages; the sweep will")
