"""Instructions per request, counted by callgrind: a figure that does not move with the load
on the machine, for comparing two versions of a hot path.

    apt-get install -y valgrind
    .venv/bin/python -m loadtests.instructions --kind book --requests 1000 [--database postgres]

Sets up what the app needs as the load test does (a real redis-server, the demo network
in a throwaway record counted into Redis), then runs the app in process twice under
``valgrind --tool=callgrind``: once driving ``--base`` requests (300) and once ``--base +
--requests``, 32 at a time, straight into its ASGI entry (no HTTP server: uvicorn's share is
not counted). The difference divided by ``--requests`` is the app's cost of one request,
startup and set-up excluded. Bookings (``book``) go to random open office-days with distinct
national IDs, as wrk's do; ``slots`` and ``nearby`` read as wrk's do.

PostgreSQL and Redis run outside valgrind: their work is not counted, only the client's.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import uvloop
from redis import Redis

from loadtests import workloads
from loadtests.pg_baseline import PgCluster
from loadtests.pg_baseline import temp_workdir as pg_workdir
from loadtests.stack import PYTHON, NobatStack, morning_timezone

CONCURRENCY = 32
STALLED_SECONDS = 600.0
"""A driven run with no request finished for this long (at valgrind's pace; the app's start
and stop included) has stopped: it says where each task waits, and fails."""


def _lines(kind: str, count: int, fixture: dict[str, Any]) -> list[workloads.Line]:
    rng = random.Random()
    network = asyncio.run(workloads.load_network(fixture["database_url"]))
    redis = Redis.from_url(fixture["redis_url"])
    today = dt.datetime.now(ZoneInfo(fixture["tz"])).date()
    candidates = [
        (rng.choice(network.offices).code, today + dt.timedelta(days=rng.randrange(1, 14))) for _ in range(20_000)
    ]
    pairs = workloads.open_office_days(redis, candidates)
    read_day = workloads.first_open_day(redis, network.first_offices()[0], today)  # as loadtests.run reads
    redis.close()
    addresses = workloads.Addresses(rng)
    if kind == "book":
        phones = workloads.phones(fixture["secret"], rng)
        ids = workloads.national_ids(rng, exclude=set())
        lines = workloads.booking_lines(
            count=count, pairs=pairs, network=network, phones=phones, ids=ids, rng=rng, addresses=addresses,
            tag=f"i{rng.random()}",
        )  # fmt: skip
    elif kind == "slots":
        lines = workloads.slots_lines(count=count, pairs=pairs, network=network, rng=rng, addresses=addresses)
    else:
        lines = workloads.nearby_lines(count=count, network=network, rng=rng, addresses=addresses, day=read_day)
    return list(lines)


async def _drive(lines: list[workloads.Line]) -> dict[int, int]:
    """Run the requests through the app's ASGI entry, ``CONCURRENCY`` at a time."""
    from app.main import create_app

    app = create_app()
    statuses: dict[int, int] = {}

    async def call(line: workloads.Line) -> None:
        method, target, token, key, body, address = line
        path, _, query = target.partition("?")
        headers = [(b"host", b"nobat"), (b"x-forwarded-for", address.encode())]
        if token:
            headers.append((b"authorization", f"Bearer {token}".encode()))
        if key:
            headers.append((b"idempotency-key", key.encode()))
        if body:
            headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
            "headers": headers, "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 80), "state": {},
        }  # fmt: skip
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body.encode(), "more_body": False}
            await asyncio.Event().wait()  # the client never goes away
            return {}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses[message["status"]] = statuses.get(message["status"], 0) + 1

        await app(scope, receive, send)  # type: ignore[arg-type]

    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def lifespan_receive() -> dict[str, Any]:
        return await queue.get()

    async def lifespan_send(message: dict[str, Any]) -> None:
        await replies.put(message)

    finished = [0]
    watch = asyncio.create_task(_watch(finished))
    lifespan = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, lifespan_receive, lifespan_send)
    )  # type: ignore[arg-type]
    await queue.put({"type": "lifespan.startup"})
    started = await replies.get()
    if started["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"the app did not start: {started}")
    pending = list(lines)

    async def worker() -> None:
        while pending:
            await call(pending.pop())
            finished[0] += 1

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    await queue.put({"type": "lifespan.shutdown"})
    await replies.get()
    await lifespan
    watch.cancel()
    return statuses


async def _watch(finished: list[int]) -> None:
    """Fail a run whose requests have stopped, saying where every task waits (one such run,
    beside another under valgrind, had sat idle for ten minutes with nothing to show why)."""
    seen = -1
    while finished[0] != seen:
        seen = finished[0]
        await asyncio.sleep(STALLED_SECONDS)
    print(f"no request finished for {STALLED_SECONDS:.0f} s after {seen}; where each task waits:", file=sys.stderr)
    for task in asyncio.all_tasks():
        task.print_stack(file=sys.stderr)
    sys.stderr.flush()
    os._exit(3)


def _count(kind: str, count: int, fixture_path: Path) -> int:
    done = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            PYTHON,
            "-m",
            "loadtests.instructions",
            "--drive",
            str(fixture_path),
            "--kind",
            kind,
            "--requests",
            str(count),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    found = re.search(r"I\s+refs:\s+([0-9,]+)", done.stderr)
    if done.returncode or not found:
        raise RuntimeError(f"callgrind failed ({done.returncode}): {done.stderr[-8000:]}")
    print(done.stdout.strip())
    return int(found[1].replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.instructions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=["book", "slots", "nearby"], default="book")
    parser.add_argument("--requests", type=int, default=1000, help="requests counted (default 1000)")
    parser.add_argument("--base", type=int, default=300, help="requests of the run subtracted (default 300)")
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="postgres")
    parser.add_argument("--drive", help=argparse.SUPPRESS)  # the child under valgrind: a fixture file
    args = parser.parse_args()
    if args.drive:
        fixture = json.loads(Path(args.drive).read_text())
        os.environ.update(fixture["env"])
        lines = _lines(args.kind, args.requests, fixture)
        uvloop.install()  # as uvicorn serves it
        statuses = asyncio.run(_drive(lines))
        print(f"{args.kind}: {args.requests} requests, answers {dict(sorted(statuses.items()))}")
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install -y valgrind)")
    workdir = Path(tempfile.mkdtemp(prefix="nobat-instructions-"))
    pg = None
    database_url = None
    if args.database == "postgres":
        pg = PgCluster(pg_workdir()).start()
        database_url = pg.create_database("nobat")
    tz = morning_timezone()
    secret = "instructions-" + "x" * 32
    stack = NobatStack(
        workdir, workers=1, rq_workers=0, tz=tz, secret_key=secret, twilio_token="x" * 32, database_url=database_url
    )
    try:
        stack.start_redis()
        print("seeding the demo network and counting it into Redis")
        stack.seed_and_build()
        fixture = {
            "env": {k: v for k, v in stack.env.items() if k.startswith(("NOBAT_", "DATABASE_URL", "REDIS_URL"))},
            "database_url": stack.database_url,
            "redis_url": stack.redis.url,
            "tz": tz,
            "secret": secret,
        }
        fixture_path = workdir / "fixture.json"
        fixture_path.write_text(json.dumps(fixture))
        base = _count(args.kind, args.base, fixture_path)
        more = _count(args.kind, args.base + args.requests, fixture_path)
        print(f"{args.kind}: {(more - base) / args.requests / 1e6:.2f}M instructions a request")
    finally:
        stack.stop()
        if pg is not None:
            pg.stop()
            shutil.rmtree(pg.workdir, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
