"""The cost of one group commit (app.booking.writer) against PostgreSQL, by batch size.

    .venv/bin/python -m loadtests.bench_commit [--batch 8] [--batches 2000]

Starts a throwaway PostgreSQL cluster with the schema and a slice of the demo network, then
commits that many batches one after another, each of ``--batch`` bookings and their
confirmation messages (the rows a web booking writes), as the writer does in a rush. Prints,
per batch: the time it took, this process's CPU and PostgreSQL's (every server process).
Nothing asks Redis: the batch is always allowed to commit.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import time
import uuid

from sqlalchemy import select

from app.booking.models import BookingStatus, Channel, NewBooking
from app.booking.writer import GroupCommit, Row, _Write
from app.db import create_engine, create_schema, session_factory
from app.offices import dataset
from app.offices.models import OfficeService
from app.sms.models import SmsStatus
from app.sms.service import OUTBOX
from loadtests.pg_baseline import PgCluster, temp_workdir

WARM_UP = 50


def rows(number: int, office_id: int) -> list[Row]:
    booking = NewBooking(
        tracking_code=f"B{number:09d}",
        office_id=office_id,
        service_code="101",
        national_id=f"{number:010d}",
        mobile="09120000000",
        date=dt.date.today() + dt.timedelta(days=1),
        slot_time="10:00",
        pool="*",
        status=BookingStatus.BOOKED,
        channel=Channel.WEB,
        idempotency_key=None,
        created_at=dt.datetime.now(dt.UTC),
    )
    body = "نوبت شما ثبت شد. کد رهگیری: B000000001\nدفتر پیشخوان (کد 010003)\nگذرنامه\nشنبه ۱۵ آذر، ساعت ۱۰:۰۰"
    message = {"id": uuid.uuid4().hex, "to": "09120000000", "body": body, "kind": "booking_confirmed"}
    return [booking.row(), (OUTBOX, {**message, "status": SmsStatus.QUEUED, "attempts": 0})]


def postgres_cpu_seconds(pg: PgCluster) -> float:
    """The CPU time of this cluster's processes: its postmaster and the backends it started
    (not another cluster's on the same machine)."""
    postmaster = (pg.data / "postmaster.pid").read_text().split()[0]
    ticks = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue  # ended meanwhile
        if pid == postmaster or fields[1] == postmaster:  # fields[1]: the parent's pid
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


async def allowed() -> bool:
    return True


async def main(batch: int, batches: int) -> None:
    pg = PgCluster(temp_workdir()).start()
    engine = create_engine(pg.dsn.replace("postgresql://", "postgresql+asyncpg://"), pre_ping=False)
    try:
        await create_schema(engine)
        async with session_factory(engine)() as session:
            await dataset.load(session, dataset.slice_of(dataset.generate(offices=dataset.MIN_OFFICES), offices=20))
            await session.commit()
            office_id = await session.scalar(
                select(OfficeService.office_id).where(OfficeService.service_code == "101").limit(1)
            )
        assert office_id is not None
        writer = GroupCommit(engine, send_sms=lambda ids: None, may_commit=allowed)
        made = 0

        async def commit_one() -> None:
            nonlocal made
            writes = [_Write(rows(made + n, office_id), [], None) for n in range(batch)]
            made += batch
            await writer._commit(writes)

        for _ in range(WARM_UP):
            await commit_one()
        cpu, postgres, started = time.process_time(), postgres_cpu_seconds(pg), time.perf_counter()
        for _ in range(batches):
            await commit_one()
        took = time.perf_counter() - started
        cpu, postgres = time.process_time() - cpu, postgres_cpu_seconds(pg) - postgres
        print(
            f"batches of {batch}: {1e6 * took / batches:,.0f} us a batch, this process's CPU "
            f"{1e6 * cpu / batches:,.0f} us, PostgreSQL's {1e6 * postgres / batches:,.0f} us"
        )
    finally:
        await engine.dispose()
        pg.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8, help="bookings a batch")
    parser.add_argument("--batches", type=int, default=2000)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.batch, arguments.batches))
