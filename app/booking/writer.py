"""Group commit: the inserts of concurrent bookings share one transaction.

During a rush hundreds of bookings a second each want a commit, and a commit is a round
trip and a disk flush. Here the first booking to arrive is committed at once; those that
arrive while that commit is under way are committed together right after it, and so on.
No booking waits for a timer, and none is confirmed before its own rows are committed:
each caller awaits the commit that carried its rows, and gets that commit's error if it
failed. A row that breaks a constraint (the same citizen twice on a day) must not fail the
bookings it happened to share a transaction with, so a batch that fails on a constraint is
committed again one booking at a time.

On SQLite (the embedded demo) it matters even more: there is one write lock for the whole
file, and thirty sessions each waiting for it (and sleeping in the busy handler between
tries) left the event loop idle half the time in the load test; one writer committing
batches takes the lock once per batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Insert, insert
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import Base

log = logging.getLogger(__name__)

AfterCommit = Callable[[], None]


@dataclass
class _Write:
    rows: Sequence[Base]
    after_commit: Sequence[AfterCommit]
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class GroupCommit:
    async def close(self) -> None:
        self._enqueuer.shutdown(wait=True)
        engine = self.sessions.kw.get("bind")
        if engine is not None:
            await engine.dispose()

    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, max_batch: int = 500) -> None:
        self.sessions = sessions
        self.max_batch = max_batch
        self._pending: list[_Write] = []
        self._enqueuer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="enqueue")
        self._draining: asyncio.Task[None] | None = None

    async def write(self, session: AsyncSession, rows: Sequence[Base], after: Sequence[AfterCommit] = ()) -> None:
        """Commit these rows (with whatever else is being committed now); then run ``after``."""
        # Give the request's connection back first: with more bookings in flight than the
        # pool holds, requests idling in a transaction would starve the writer.
        await session.commit()
        write = _Write(rows, after)
        self._pending.append(write)
        if self._draining is None or self._draining.done():
            self._draining = asyncio.create_task(self._drain())
        # shield: a caller that gives up (the client went away) must not cancel the commit
        # its neighbours are waiting for.
        await asyncio.shield(write.done)

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            try:
                await self._commit(batch)
            except IntegrityError:
                for write in batch:
                    await self._commit_alone(write)
            except BaseException as error:
                for write in batch:
                    if not write.done.done():
                        write.done.set_exception(error)

    async def _commit(self, batch: list[_Write]) -> None:
        async with self.sessions() as session:
            for statement, values in _inserts([row for write in batch for row in write.rows]):
                await session.execute(statement, values)
            await session.commit()
        # Confirmed as soon as committed; the batch's jobs are enqueued on a thread of their
        # own, so the next commit does not wait for this one's round trips to RQ's Redis (a
        # job whose enqueue is lost is found by the sweep: its outbox row is committed).
        actions = [action for write in batch for action in write.after_commit]
        if actions:
            self._enqueuer.submit(_run_all, actions)
        for write in batch:
            if not write.done.done():
                write.done.set_result(None)

    async def _commit_alone(self, write: _Write) -> None:
        try:
            await self._commit([write])
        except BaseException as error:
            if not write.done.done():
                write.done.set_exception(error)


def _inserts(rows: Sequence[Base]) -> list[tuple[Insert, list[dict[str, Any]]]]:
    """One multi-row INSERT per table (and set of given columns) instead of the unit of
    work's flush, which was the largest part of a batch's commit in the profile. The rows
    are new objects never added to a session; columns left unset get their defaults."""
    groups: dict[tuple[type[Base], tuple[str, ...]], list[dict[str, Any]]] = {}
    for row in rows:
        values = {
            attr.key: value
            for attr in sa_inspect(type(row)).column_attrs
            if (value := getattr(row, attr.key)) is not None
        }
        groups.setdefault((type(row), tuple(values)), []).append(values)
    return [(insert(model), values) for (model, _), values in groups.items()]


def _run_all(actions: list[AfterCommit]) -> None:
    for action in actions:
        try:
            action()
        except Exception:
            # The rows are committed; the sweep picks up whatever this failed to enqueue.
            log.exception("could not enqueue a job after a group commit")
