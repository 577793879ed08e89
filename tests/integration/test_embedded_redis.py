"""The embedded redis-server (the demo's, and every test's): its own, on its own port."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis import Redis as SyncRedis

from app.redis import EmbeddedRedis


def test_a_port_taken_before_the_server_binds_it_is_traded_for_another(tmp_path: Path) -> None:
    """A port found free was taken by another server before this one bound it (two test
    workers choosing at once): this one exited, and its start took the other's PONG for its
    own; the test's FLUSHDB then emptied the other worker's Redis."""
    first = EmbeddedRedis(tmp_path / "first").start()
    second = EmbeddedRedis(tmp_path / "second")
    second.port = first.port  # as if free_port had answered the same port to both
    try:
        second.start()
        assert second.port != first.port
        assert second.process is not None
        with SyncRedis.from_url(second.url) as redis:
            assert redis.info("server")["process_id"] == second.process.pid
    finally:
        second.stop()
        first.stop()


def test_a_port_given_and_taken_is_refused(tmp_path: Path) -> None:
    first = EmbeddedRedis(tmp_path / "first").start()
    try:
        with pytest.raises(RuntimeError, match="exited"):
            EmbeddedRedis(tmp_path / "second", port=first.port).start()
    finally:
        first.stop()
