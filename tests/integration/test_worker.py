"""The RQ worker's own behaviour, against a real Redis."""

from __future__ import annotations

import time

from redis import Redis
from rq import Queue

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
