"""A worker's jobs run on one event loop kept from job to job (app.sms.tasks): a job stopped
from outside, as RQ's time limit stops one, leaves nothing on it to run during the next."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from types import FrameType, SimpleNamespace

import pytest

from app.sms.tasks import _Runtime


class TimeUp(Exception):
    """As rq's JobTimeoutException: raised by a SIGALRM handler in whatever frame runs."""


@pytest.fixture
def alarm() -> Iterator[None]:
    def time_up(signum: int, frame: FrameType | None) -> None:
        raise TimeUp

    before = signal.signal(signal.SIGALRM, time_up)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)


def test_a_job_stopped_from_outside_is_cancelled_not_left_to_resume(alarm: None) -> None:
    runtime = _Runtime()
    let_go: list[str] = []

    async def moving() -> None:
        try:
            await asyncio.sleep(30)  # waiting on I/O, as a job mostly is when the alarm comes
        finally:
            let_go.append("locks")

    signal.setitimer(signal.ITIMER_REAL, 0.05)
    with pytest.raises(TimeUp):
        runtime.run(moving())
    assert let_go == ["locks"]
    assert runtime.loop is not None and not asyncio.all_tasks(runtime.loop)

    async def next_job() -> str:
        return "ran"

    assert runtime.run(next_job()) == "ran"  # the same loop serves the next job
    assert let_go == ["locks"]
    runtime.loop.close()


def test_a_job_that_fails_raises_its_own_error() -> None:
    async def failing() -> None:
        raise ValueError("the job's own")

    runtime = _Runtime()
    with pytest.raises(ValueError, match="the job's own"):
        runtime.run(failing())
    assert runtime.loop is not None and not asyncio.all_tasks(runtime.loop)
    runtime.loop.close()


def test_a_job_that_swallows_errors_still_ends_before_its_time_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A step's ``except Exception`` (one office's failure must not keep the others waiting)
    swallowed RQ's time limit when it struck inside it: the job ran on past its limit. The
    job's coroutine is cancelled a moment before (a cancel is no Exception)."""
    from app.sms import tasks

    monkeypatch.setattr(tasks, "get_current_job", lambda: SimpleNamespace(timeout=3))
    steps: list[int] = []

    async def every_office() -> None:
        for office in range(300):
            try:
                steps.append(office)
                await asyncio.sleep(0.1)
            except Exception:  # as the minute's jobs do for one office's failure
                continue

    runtime = _Runtime()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        runtime.run(every_office())
    assert time.monotonic() - started < 3  # before RQ's limit
    assert 5 < len(steps) < 300
    assert runtime.loop is not None and not asyncio.all_tasks(runtime.loop)
    runtime.loop.close()
