"""Reference (2): a booking done only in PostgreSQL, with a row lock on the slot.

    PG_DSN=postgresql://postgres@127.0.0.1:PORT/postgres .venv/bin/python -m uvicorn --factory \
        loadtests.pg_baseline:app_from_env --workers 2 --port 8002 --http app.serving:CorkedHttpProtocol

The textbook way to sell seats without Redis: in one transaction, ``SELECT … FOR UPDATE`` the
slot's row, check seats against used, bump used, insert the booking, commit. Every booking of
a slot waits for the lock, and the lock is held through the commit (the WAL flush), so a hot
slot is as fast as one commit after another. Run on one hot slot and spread over 1,000 slots.

PostgreSQL runs as a throwaway cluster under a temporary directory (``PgCluster``), started
as the ``postgres`` user when we are root (PostgreSQL refuses to run as root), with its
defaults for durability: fsync and synchronous_commit on, as in production.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
from litestar import Litestar, Response, post
from litestar.datastructures import State

from app.booking.tracking import new_tracking_code
from app.redis import free_port

SLOTS = 1000
HOT_SLOT = 1
SEATS = 10**9  # never full: the run measures taking seats, not refusing them

SCHEMA = f"""
DROP TABLE IF EXISTS bookings;
DROP TABLE IF EXISTS slots;
CREATE TABLE slots (
    id integer PRIMARY KEY,
    office_code text NOT NULL,
    day date NOT NULL,
    slot_time text NOT NULL,
    seats integer NOT NULL,
    used integer NOT NULL DEFAULT 0
);
CREATE TABLE bookings (
    id bigserial PRIMARY KEY,
    tracking_code text NOT NULL UNIQUE,
    slot_id integer NOT NULL REFERENCES slots (id),
    national_id text NOT NULL,
    service_code text NOT NULL,
    day date NOT NULL,
    status text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- The same backstop as the service's: one active booking per national ID, service and day.
CREATE UNIQUE INDEX uq_active ON bookings (national_id, service_code, day) WHERE status = 'booked';
CREATE INDEX ix_bookings_slot ON bookings (slot_id);
INSERT INTO slots (id, office_code, day, slot_time, seats)
SELECT n, lpad((n / 16)::text, 6, '0'), current_date + 1, to_char(time '08:00' + (n % 16) * interval '30 minutes', 'HH24:MI'), {SEATS}
FROM generate_series(1, {SLOTS}) AS n;
"""


class PgCluster:
    """A throwaway PostgreSQL cluster on a loopback port, under a temporary directory."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.data = workdir / "pgdata"
        self.bin = _pg_bin()
        self._as_postgres = os.geteuid() == 0

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 120) -> None:
        command = list(args)
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout)
        if done.returncode:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {done.stderr.strip() or done.stdout.strip()}")

    def start(self) -> PgCluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self._as_postgres:
            shutil.chown(self.workdir, "postgres", "postgres")
        self._run(
            f"{self.bin}/initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"
        )
        options = (
            f"-c port={self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.workdir} "
            "-c max_connections=200 -c shared_buffers=256MB"
        )
        self._run(
            f"{self.bin}/pg_ctl", "-D", str(self.data), "-l", str(self.workdir / "pg.log"), "-o", options, "-w", "start"
        )
        return self

    def stop(self) -> None:
        if self.data.exists():
            with contextlib.suppress(RuntimeError):
                self._run(f"{self.bin}/pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", timeout=60)

    def create_database(self, name: str) -> str:
        """A new database on the cluster; its URL for SQLAlchemy's asyncpg driver."""
        self.psql(f"CREATE DATABASE {name}")
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{name}"

    def postmaster_pid(self) -> int | None:
        """The server's process (for its CPU time); None when it is not running."""
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def psql(self, sql: str, database: str = "postgres") -> None:
        self._run(
            f"{self.bin}/psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", database,
            "-v", "ON_ERROR_STOP=1", "-q", "-c", sql,
        )  # fmt: skip


def _pg_bin() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return str(Path(found[-1]).parent)
    initdb = shutil.which("initdb")
    if initdb:
        return str(Path(initdb).parent)
    raise RuntimeError("PostgreSQL is not installed (apt-get install -y postgresql)")


def temp_workdir() -> Path:
    """A directory of its own: the postgres user must own it, and cannot enter a root-only parent."""
    return Path(tempfile.mkdtemp(prefix="nobat-loadpg-"))


# --- the endpoint ---------------------------------------------------------------------------


class BookIn(msgspec.Struct, forbid_unknown_fields=True):
    slot_id: int
    national_id: str
    service_code: str = "101"


class BookOut(msgspec.Struct):
    tracking_code: str
    slot: str


@post("/book", status_code=201)
async def book(data: BookIn, state: State) -> Response[Any]:
    tracking_code = new_tracking_code()
    async with state.pool.acquire() as conn, conn.transaction():
        slot = await conn.fetchrow(
            "SELECT seats, used, day, slot_time FROM slots WHERE id = $1 FOR UPDATE", data.slot_id
        )
        if slot is None:
            return Response({"code": "no_slot"}, status_code=404)
        if slot["used"] >= slot["seats"]:
            return Response({"code": "slot_full"}, status_code=409)
        await conn.execute("UPDATE slots SET used = used + 1 WHERE id = $1", data.slot_id)
        await conn.execute(
            "INSERT INTO bookings (tracking_code, slot_id, national_id, service_code, day, status)"
            " VALUES ($1, $2, $3, $4, $5, 'booked')",
            tracking_code,
            data.slot_id,
            data.national_id,
            data.service_code,
            slot["day"],
        )
    return Response(BookOut(tracking_code=tracking_code, slot=slot["slot_time"]), status_code=201)


def create_app(dsn: str, pool_size: int = 20) -> Litestar:
    import asyncpg

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # The same pool size as the service's engine (app/db.py) per worker process.
        app.state.pool = await asyncpg.create_pool(dsn, min_size=pool_size, max_size=pool_size)
        try:
            yield
        finally:
            await app.state.pool.close()

    return Litestar(route_handlers=[book], lifespan=[lifespan], openapi_config=None, debug=False)


def app_from_env() -> Litestar:
    """Entry point for uvicorn (``--factory loadtests.pg_baseline:app_from_env``)."""
    return create_app(os.environ["PG_DSN"])
