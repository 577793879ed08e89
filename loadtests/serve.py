"""The load test's stack, kept up for measuring by hand (wrk, py-spy, the workers' CPU in /proc).

    .venv/bin/python -m loadtests.serve [--workers 2] [--searches 200000] [--parts 5]

Starts what ``loadtests.run`` serves its wrk phases on: PostgreSQL, a real Redis with the
national network counted into it, and uvicorn workers (one write a response). Writes random
nearby searches, as the run makes them, to request files for ``loadtests/wrk/requests.lua``,
cut into parts so that each run can send searches the workers have not seen. Prints the
commands to drive it and the workers' pids, and keeps it all up until Ctrl-C.
docs/performance.md's by-hand figures were measured on it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import secrets
import signal
import tempfile
import threading
from itertools import islice
from pathlib import Path
from zoneinfo import ZoneInfo

from redis import Redis

from loadtests import workloads
from loadtests.pg_baseline import PgCluster
from loadtests.pg_baseline import temp_workdir as pg_workdir
from loadtests.stack import NobatStack, morning_timezone


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers, as the load test's")
    parser.add_argument("--searches", type=int, default=200_000, help="random nearby searches to write")
    parser.add_argument("--parts", type=int, default=5, help="request files they are cut into")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="nobat-serve-"))
    tz = morning_timezone()  # a working morning, as the load test's: a closed day reads far cheaper
    pg = PgCluster(pg_workdir()).start()
    stack = NobatStack(
        work,
        workers=args.workers,
        staff_workers=0,
        rq_workers=0,
        tz=tz,
        secret_key=secrets.token_hex(32),
        twilio_token="t" * 32,
        database_url=pg.create_database("nobat"),
    )
    try:
        stack.start_redis()
        print(f"seeding the national network into {work} and counting it into Redis (a minute or two)", flush=True)
        stack.seed_and_build()
        stack.start_web()
        files = _nearby_files(stack, work, tz, searches=args.searches, parts=args.parts)
        lua = Path(__file__).parent / "wrk" / "requests.lua"
        print(f"serving on {stack.base_url}; web worker pids {stack.web_worker_pids()}; NOBAT_TZ={tz}")
        print("random nearby searches, one part a run:")
        for path in files:
            print(f"  wrk -t2 -c64 -d8s -s {lua} {stack.base_url} -- {path} {work}/wrk-result.json 2")
        print("Ctrl-C stops it all.", flush=True)
        stopped = threading.Event()
        for sign in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sign, lambda *_: stopped.set())
        stopped.wait()
    finally:
        stack.stop()
        pg.stop()


def _nearby_files(stack: NobatStack, work: Path, tz: str, *, searches: int, parts: int) -> list[Path]:
    """The searches ``loadtests.run`` sends in its nearby phase (random points near random
    cities, the common services, today or the next open day), in ``parts`` files."""
    network = asyncio.run(workloads.load_network(stack.database_url))
    rng = random.Random(1)
    with Redis.from_url(stack.redis.url) as redis:
        today = dt.datetime.now(ZoneInfo(tz)).date()
        day = workloads.first_open_day(redis, network.first_offices()[0], today)
    lines = workloads.nearby_lines(
        count=searches, network=network, rng=rng, addresses=workloads.Addresses(rng), day=day
    )
    files = []
    for part in range(parts):
        path = work / f"nearby-{part}.tsv"
        workloads.write_requests(path, islice(lines, -(-searches // parts)))
        files.append(path)
    return files


if __name__ == "__main__":
    main()
