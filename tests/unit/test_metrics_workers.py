"""The requests in progress of a worker process that died (out of memory, a crash) must not
stay counted: the live gauges are summed over every process's file until it is marked dead."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, multiprocess

from app.observability import forget_dead_workers

# A worker with a request in progress: it counts it, says so, then dies mid-request or waits.
WORKER = """
import os, sys
from app.observability import HTTP_IN_PROGRESS
HTTP_IN_PROGRESS.labels("POST", "/api/v1/bookings", 200, "nobat").inc()
print("counted", flush=True)
if sys.argv[1] == "die":
    os._exit(9)
sys.stdin.read()
"""


def _in_progress(directory: Path) -> float:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    value = registry.get_sample_value(
        "nobat_http_requests_in_progress",
        {"method": "POST", "path": "/api/v1/bookings", "status_code": "200", "app_name": "nobat"},
    )
    return value or 0.0


def _worker(directory: Path, how: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, how], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert worker.stdout is not None and worker.stdout.readline().strip() == "counted"
    return worker


def test_a_dead_workers_requests_in_progress_are_forgotten_a_live_ones_kept(tmp_path: Path) -> None:
    alive = _worker(tmp_path, "wait")
    dead = _worker(tmp_path, "die")
    try:
        assert dead.wait(timeout=30) == 9
        assert _in_progress(tmp_path) == 2
        assert forget_dead_workers(str(tmp_path)) == [dead.pid]
        assert _in_progress(tmp_path) == 1
        assert forget_dead_workers(str(tmp_path)) == []
    finally:
        alive.communicate("", timeout=30)
    assert forget_dead_workers(str(tmp_path)) == [alive.pid]
    assert _in_progress(tmp_path) == 0
