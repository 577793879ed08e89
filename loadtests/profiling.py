"""Where a booking's time goes: py-spy on the uvicorn workers while wrk books, summarised.

``py-spy record --idle --threads -f raw`` samples every thread of a worker, on CPU or not
(--idle), so a sample says where the event loop thread was, including waits that block it.
The raw files are collapsed stacks (open them in https://www.speedscope.app). The summary
keeps the event loop thread (MainThread) and puts each sample in one category, so that the
shares add up to 100%: the category of the frame nearest the leaf that names a piece of
nobat's work (``SPECIFIC``), else of the nearest library frame (``GENERIC``). So time spent
in redis-py under ``Capacity.hold`` counts as the HOLD script, and time in SQLAlchemy under
the RQ enqueue that a commit runs counts as the enqueue.

SQLAlchemy's asyncio layer runs ORM code in greenlets, whose stacks py-spy shows without
the asyncio frames above them: they still carry the frames below, so they land right.
"""

from __future__ import annotations

import collections
import functools
import inspect
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

SPECIFIC: list[tuple[str, tuple[str, ...]]] = [
    # The group commit's messages go to RQ on a thread of their own (not sampled here); a
    # sign-in code or a cancellation's message is enqueued from the session's after_commit hook.
    ("RQ enqueue after commit (sync redis-py on the event loop)", ("Jobs.enqueue (", "Jobs.enqueue_at (", "(rq/")),
    (
        "allowance, citizen limits and seat: TAKE + HOLD + RESERVE",
        ("Capacity.hold_and_reserve (",),
    ),
    ("Redis trips shared by requests (AutoPipeline)", ("AutoPipeline.",)),
    ("office and service lookup", ("bookable_office (", "OfficeDirectory.")),
    ("Idempotency-Key lookup (SQL)", ("_by_idempotency_key (",)),
    ("SQL commit (group commit)", ("AsyncSession.commit (", "Session.commit (", "GroupCommit.")),
    ("bearer token check (JWT)", ("mobile_from_token (",)),
    ("per-address request limit", ("_limit_per_address (", "RequestLimiter.", "RateLimiter.hit (")),
    ("metrics (Prometheus)", ("prometheus_client/",)),
    ("booking service, other", ("BookingService.",)),
    ("slots: the day's counters from Redis", ("day_for_reading (", "Capacity.day_view (", "bookable_slots (")),
    ("nearby: the nearest offices, found in memory", ("app/offices/nearest.py",)),
    ("nearby: counters read, ranking, the answer", ("LoadService.",)),
]
GENERIC: list[tuple[str, tuple[str, ...]]] = [
    ("SQL other (session, queries, pool)", ("sqlalchemy/", "asyncpg/", "aiosqlite/")),
    ("Redis client, other", ("redis/",)),
    ("metrics and request id middleware", ("observe_requests", "app/observability.py")),
    ("Litestar, msgspec, uvicorn (HTTP, routing, JSON)", ("litestar/", "uvicorn/protocols/", "httptools", "msgspec")),
]
IDLE = "event loop idle (waiting for I/O)"
# Frames on (nearly) every stack, the process and the event loop around the work: they say nothing.
_BORING = (
    "multiprocessing/",
    "<module>",
    "uvicorn/_compat.py",
    "uvicorn/server.py",
    "uvicorn/_subprocess.py",
    "uvicorn/supervisors/",
    "asyncio/runners.py",
    "asyncio/base_events.py",
    "asyncio/events.py",
)
OTHER = "other"


def pyspy_binary() -> str | None:
    """py-spy from PATH, else beside this Python (``.venv/bin/pip install py-spy``)."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def start_recording(
    pid: int, output: Path, *, seconds: int, delay: int = 2, rate: int = 100
) -> subprocess.Popen[bytes] | None:
    """Sample one process for ``seconds`` after ``delay`` (the load's warm-up); py-spy stops by
    itself. None when py-spy is missing."""
    binary = pyspy_binary()
    if binary is None:
        return None
    args = [
        "sh", "-c", f'sleep {delay}; exec "$0" "$@"',
        binary, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", str(rate),
        "--idle", "--threads", "--nonblocking", "--format", "raw", "--output", str(output),
    ]  # fmt: skip
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _frame_name(frame: str) -> str:
    """ "Session.commit (sqlalchemy/orm/session.py:2177)" -> "Session.commit (sqlalchemy/orm/session.py)"."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def summarize(paths: list[Path], *, top: int = 25) -> dict[str, Any]:
    categories: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    # aiosqlite runs each SQLite connection in a thread of its own: how busy those threads are
    # (inside a SQLite call, which includes waiting for the database's one write lock).
    db_threads: set[str] = set()
    db_samples = db_busy = 0
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            thread = stack.split(";", 1)[0]
            if "_connection_worker_thread (aiosqlite/" in stack:
                db_threads.add(f"{path.name}:{thread}")
                db_samples += int(count_text)
                if not stack.endswith(_aiosqlite_idle_frame()):
                    db_busy += int(count_text)
                continue
            if not stack.startswith("thread (") or "MainThread" not in thread:
                continue
            count = int(count_text)
            frames = stack.split(";")[1:]
            total += count
            for name in {_frame_name(frame) for frame in frames}:
                inclusive[name] += count
            categories[_categorize(frames)] += count
    if not total:
        return {"samples": 0}
    return {
        "samples": total,
        "sqlite_threads": {"threads": len(db_threads), "busy_share": round(db_busy / db_samples, 4)}
        if db_samples
        else None,
        "categories": [
            {"category": name, "share": round(count / total, 4)} for name, count in categories.most_common()
        ],
        "top_inclusive": [
            {"frame": name, "share": round(count / total, 4)}
            for name, count in inclusive.most_common(top * 3)
            if not any(boring in name for boring in _BORING)
        ][:top],
    }


@functools.cache
def _aiosqlite_idle_frame() -> str:
    """The frame of an aiosqlite thread waiting for work (its queue's get() is C, so the wait
    shows as the worker function itself, at that line); any other line is a SQLite call."""
    try:
        import aiosqlite.core

        lines, first = inspect.getsourcelines(aiosqlite.core._connection_worker_thread)
    except (ImportError, AttributeError, OSError):
        return "\0"
    for offset, line in enumerate(lines):
        if "tx.get()" in line:
            return f"_connection_worker_thread (aiosqlite/core.py:{first + offset})"
    return "\0"


def _categorize(frames: list[str]) -> str:
    # uvloop waits for I/O in C: an idle event loop shows as its Python caller at the leaf.
    leaf = frames[-1] if frames else ""
    if leaf.startswith(("Runner.run (", "BaseEventLoop.run_forever", "select (", "_run_once", "Server.serve (")):
        return IDLE
    for table in (SPECIFIC, GENERIC):
        for frame in reversed(frames):
            for name, markers in table:
                if any(marker in frame for marker in markers):
                    return name
    return OTHER
