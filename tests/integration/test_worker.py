"""The RQ worker's own behaviour, against a real Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from redis import Redis
from rq import Queue
from rq.job import JobStatus

from workers.queues import CODES, DEFAULT
from workers.worker import Worker


def test_a_worker_stops_at_once_when_its_listener_reads_the_unsubscribe_first(redis_sync: Redis) -> None:
    """The race that made a shutdown take a minute: the listener thread reads the reply to
    UNSUBSCRIBE and waits again before it is told to stop. Forced here by letting it read the
    reply first; with RQ's 60 s wait the stop takes a minute."""
    worker = Worker([Queue("test-worker", connection=redis_sync)], connection=redis_sync)
    worker.subscribe()
    assert worker.pubsub is not None and worker.pubsub_thread is not None
    deadline = time.monotonic() + 5
    while not worker.pubsub.subscribed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert worker.pubsub.subscribed
    worker.pubsub.unsubscribe()
    while worker.pubsub.subscribed and time.monotonic() < deadline:
        time.sleep(0.01)  # the listener has read the reply, and waits again
    assert not worker.pubsub.subscribed
    started = time.monotonic()
    worker.unsubscribe()
    assert time.monotonic() - started < 3
    assert not worker.pubsub_thread.is_alive()


def test_a_worker_kept_for_messages_leaves_housekeeping_to_the_others(redis_sync: Redis, redis_url: str) -> None:
    """``--queues codes,sms``: a sign-in code is sent, and a job of the default queue (which
    can run for half an hour) is left for a worker that takes every queue."""
    code = Queue(CODES, connection=redis_sync).enqueue("os.getpid")
    housekeeping = Queue(DEFAULT, connection=redis_sync).enqueue("os.getpid")
    env = {**os.environ, "REDIS_URL": redis_url, "RQ_REDIS_URL": ""}
    command = [sys.executable, "-m", "workers.worker", "--burst"]
    subprocess.run([*command, "--queues", "codes,sms"], env=env, check=True, timeout=60)
    assert code.get_status(refresh=True) == JobStatus.FINISHED
    assert housekeeping.get_status(refresh=True) == JobStatus.QUEUED
    subprocess.run(command, env=env, check=True, timeout=60)
    assert housekeeping.get_status(refresh=True) == JobStatus.FINISHED
