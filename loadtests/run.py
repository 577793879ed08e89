"""One command: start the service as in production, load it, check it, measure the references.

    .venv/bin/python -m loadtests.run --scenario rush --users 200 --duration 60

1. A throwaway directory with a real redis-server, a fresh SQLite record (or PostgreSQL with
   ``--database postgres``) seeded with the 17,000-office demo network and counted into Redis,
   the app under uvicorn with ``--workers 2``, an RQ worker (console SMS backend, or the
   Twilio stand-in with ``--sms-backend twilio``).
2. The Locust scenario, headless, for a fixed time and number of users (loadtests/locustfile.py).
3. With wrk (``--references all``, the default; ``service``: only this part): the full booking path spread over the country
   and on one hot office-day, the read paths (slots, nearby; random and hot), then py-spy
   profiles of the booking, slots and nearby paths in short runs of their own.
4. The correctness check (loadtests/check.py): any overbooking fails the run (exit 1).
5. The references on the same machine and the same Redis: the raw RESERVE rate
   (redis-benchmark), a bare Litestar endpoint that only runs RESERVE, and a booking done
   only in PostgreSQL with SELECT … FOR UPDATE, on one hot slot and over 1,000 slots.
6. Results under loadtests/results/: JSON and a Markdown table.

Every load is bounded in time (and wrk's also in count, by its request file); all traffic goes
to 127.0.0.1. Nothing outlives the run unless ``--keep`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import gzip
import json
import os
import random
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from redis import Redis
from sqlalchemy import func, select

from app.booking.models import Booking
from app.db import create_engine, session_factory
from app.redis import free_port
from loadtests import ceiling, check, memory, profiling, report, workloads
from loadtests.bare_reserve import bench_day_fields, bench_day_key, day_slots
from loadtests.pg_baseline import HOT_SLOT, SCHEMA, SLOTS, PgCluster
from loadtests.pg_baseline import temp_workdir as pg_workdir
from loadtests.stack import (
    PYTHON,
    ROOT,
    NobatStack,
    Process,
    cpu_seconds,
    morning_timezone,
    tree_cpu_seconds,
    uvicorn_args,
)
from loadtests.wrk_driver import WrkResult, run_wrk, wrk_binary

RESULTS = Path(__file__).parent / "results"
LOCUSTFILE = Path(__file__).parent / "locustfile.py"
SCENARIOS: dict[str, list[str]] = {
    "rush": ["RushCitizen", "StaffClerk"],
    "steady": ["SteadyCitizen", "SmsCitizen", "StaffClerk"],
    "sms": ["SmsCitizen"],
    # The clerks' check-ins and capacity changes during a rush (issue 8): alone, with no
    # bookings, they had nobody to check in and no overflow to move.
    "staff": ["RushCitizen", "StaffClerk"],
}
RUSHES = ("rush", "staff")
"""Scenarios whose citizens sign in first and book together when the rush opens."""
# Requests written per second of a wrk run: more than any of them can do here, so that a
# run ends by its time, not by running out of distinct national IDs.
WRK_RATE_CAP = {"bookings": 6000, "reads": 12000, "bare": 14000, "pg": 4000}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def load_average() -> float:
    return os.getloadavg()[0]


def wait_for_quiet(threshold: float, max_wait: int) -> float:
    """Others share these 2 cores: wait (a bounded time) until the 1-minute load is low."""
    deadline = time.monotonic() + max_wait
    while load_average() > threshold and time.monotonic() < deadline:
        time.sleep(5)
    return load_average()


def http_json(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


async def booking_counts(database_url: str) -> dict[str, int]:
    """Bookings by channel and status: before and after a phase, the difference is what it sold."""
    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as session:
            rows = await session.execute(
                select(Booking.channel, Booking.status, func.count()).group_by(Booking.channel, Booking.status)
            )
            return {f"{channel.value}:{status.value}": int(n) for channel, status, n in rows}
    finally:
        await engine.dispose()


def sold(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Bookings confirmed between two counts, by channel (a waitlist entry is not a booking)."""
    out: dict[str, int] = {}
    for key in set(before) | set(after):
        channel, status = key.split(":")
        if status != "waitlisted":
            out[channel] = out.get(channel, 0) + after.get(key, 0) - before.get(key, 0)
    return out


def read_locust_csv(prefix: Path) -> dict[str, Any]:
    stats_path = Path(f"{prefix}_stats.csv")
    if not stats_path.exists():
        return {}
    endpoints = []
    aggregated: dict[str, Any] = {}
    with stats_path.open() as handle:
        for row in csv.DictReader(handle):
            entry = {
                "type": row["Type"],
                "name": row["Name"],
                "requests": int(row["Request Count"]),
                "failures": int(row["Failure Count"]),
                "rps": float(row["Requests/s"]),
                "p50_ms": _number(row.get("50%")),
                "p95_ms": _number(row.get("95%")),
                "p99_ms": _number(row.get("99%")),
                "max_ms": _number(row.get("Max Response Time")),
            }
            if row["Name"] == "Aggregated":
                aggregated = entry
            else:
                endpoints.append(entry)
    failures = []
    failures_path = Path(f"{prefix}_failures.csv")
    if failures_path.exists():
        with failures_path.open() as handle:
            failures = [
                {"method": r["Method"], "name": r["Name"], "error": r["Error"], "count": int(r["Occurrences"])}
                for r in csv.DictReader(handle)
            ]
    # A user whose task raised (in on_start it is dead for the rest of the run) shows only here.
    exceptions = []
    exceptions_path = Path(f"{prefix}_exceptions.csv")
    if exceptions_path.exists():
        with exceptions_path.open() as handle:
            exceptions = [{"count": int(r["Count"]), "message": r["Message"]} for r in csv.DictReader(handle)]
    return {"aggregated": aggregated, "endpoints": endpoints, "failures": failures, "exceptions": exceptions}


def rush_window_rps(prefix: Path, opened: float, ended: float) -> float | None:
    """Requests per second between two moments, from Locust's per-second history."""
    path = Path(f"{prefix}_stats_history.csv")
    if not path.exists():
        return None
    points = []
    with path.open() as handle:
        for row in csv.DictReader(handle):
            if row["Name"] == "Aggregated" and opened <= float(row["Timestamp"]) <= ended:
                points.append((float(row["Timestamp"]), int(row["Total Request Count"])))
    if len(points) < 2:
        return None
    return round((points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0]), 1)


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "", "N/A") else None
    except ValueError:
        return None


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix="nobat-load-"))
        self.tz = morning_timezone() if args.tz == "auto" else args.tz
        # The run's first day in the service's zone: the check starts there, past midnight too.
        self.first_day = dt.datetime.now(ZoneInfo(self.tz)).date()
        self.secret = secrets.token_urlsafe(32)
        self.twilio_token = secrets.token_hex(16)
        self.rng = random.Random(args.seed)
        self.results: dict[str, Any] = {
            "scenario": args.scenario,
            "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "settings": {
                key: getattr(args, key)
                for key in (
                    "users",
                    "duration",
                    "spawn_rate",
                    "workers",
                    "staff_workers",
                    "rq_workers",
                    "database",
                    "sms_backend",
                    "references",
                )
            },
            "machine": {"cores": os.cpu_count(), "load_at_start": round(load_average(), 2)},
            "notes": [],
        }
        self.pg: PgCluster | None = None
        self.stack: NobatStack | None = None
        self.used_ids: set[str] = set()
        self.cpu_pids: dict[str, int] = {}  # the processes of the server under wrk, by name

    def note(self, text: str) -> None:
        if text not in self.results["notes"]:
            self.results["notes"].append(text)
            log(text)

    # --- the service -------------------------------------------------------------------------

    def start_service(self) -> NobatStack:
        args = self.args
        database_url = None
        if args.database == "postgres":
            self.pg = PgCluster(pg_workdir()).start()
            database_url = self.pg.create_database("nobat")
        stack = NobatStack(
            self.workdir,
            workers=args.workers,
            staff_workers=args.staff_workers,
            rq_workers=args.rq_workers,
            tz=self.tz,
            secret_key=self.secret,
            twilio_token=self.twilio_token,
            sms_backend=args.sms_backend,
            database_url=database_url,
        )
        self.stack = stack
        stack.start_redis()
        if args.sms_backend == "twilio":
            # Before the seed: the service's settings refuse Twilio with a local NOBAT_PUBLIC_URL
            # unless TWILIO_API_BASE_URL names a stand-in.
            stack.start_standin()
        log(f"redis-server on {stack.redis.url}; seeding the demo network and counting it into Redis")
        started = time.perf_counter()
        stack.seed_and_build()
        local = dt.datetime.now(ZoneInfo(self.tz))
        self.results["setup"] = {
            "seed_and_rebuild_seconds": round(time.perf_counter() - started, 1),
            "tz": self.tz,
            "service_time": local.strftime("%A %H:%M"),  # a closed Friday reads far cheaper
        }
        redis = Redis.from_url(stack.redis.url)
        self.results["memory"] = {"dataset_used_memory": memory.used_memory(redis)}
        self.memory_before = memory.by_kind(redis)
        self.results["memory"]["dataset_by_kind"] = self.memory_before
        redis.close()
        stack.start_web()
        stack.start_rq()
        log(
            f"service on {stack.base_url} ({args.workers} uvicorn workers; staff on {stack.staff_url},"
            f" {args.staff_workers} worker; {args.rq_workers} RQ worker), NOBAT_TZ={self.tz}"
            f" ({self.results['setup']['service_time']} there)"
        )
        return stack

    # --- Locust --------------------------------------------------------------------------------

    def locust(self, stack: NobatStack, network: workloads.Network) -> None:
        args = self.args
        redis = Redis.from_url(stack.redis.url)
        today = self.first_day
        firsts = network.first_offices()
        hot_codes = firsts[: args.hot_offices]
        # The rush is today when the hot offices open today (check-ins are for today only).
        rush_day = workloads.first_open_day(redis, hot_codes[0], today)
        if rush_day != today:
            self.results["notes"].append(f"the hot offices are closed today: the rush books {rush_day}, no check-ins")
        hot = [
            {
                "code": code,
                "lat": network.by_code[code].lat,
                "lon": network.by_code[code].lon,
                "staff_user": f"staff-{code}",
                "staff_password": f"demo-{code}-pass",
            }
            for code in hot_codes
        ]
        users = args.users
        spawn_rate = args.spawn_rate or max(1.0, users / 10)
        fixture = {
            "base_url": stack.base_url,
            "public_url": stack.base_url,
            "staff_url": stack.staff_url,
            "redis_url": stack.redis.url,
            "twilio_token": self.twilio_token,
            "twilio_account_sid": stack.env["TWILIO_ACCOUNT_SID"],
            # Where phones read their messages: the console outbox, or the Twilio stand-in.
            "sms_inbox": args.sms_backend,
            "standin_url": stack.standin_url,
            "today": today.isoformat(),
            "horizon_days": workloads.service_settings().horizon_days,
            "rush_day": rush_day.isoformat(),
            # The rush opens when every citizen has signed in, or at this deadline.
            "rush_users": max(users - len(hot), 1),
            "rush_opens_by": time.time() + users / spawn_rate + args.sms_wait,
            "sms_wait_seconds": args.sms_wait,
            "rush_seconds": args.duration,
            "hot_offices": hot,
            "offices": [
                [o.code, round(o.lat, 5), round(o.lon, 5), o.code[:2], list(o.services)] for o in network.offices
            ],
            "cities": [[name, round(lat, 5), round(lon, 5)] for name, lat, lon in network.cities],
            "common_services": list(workloads.COMMON_SERVICES),
            "outcomes_file": str(self.workdir / "locust-outcomes.json"),
        }
        fixture_path = self.workdir / "locust-fixture.json"
        fixture_path.write_text(json.dumps(fixture, ensure_ascii=False))
        prefix = self.workdir / "locust"
        classes = SCENARIOS[args.scenario]
        # The rush runs --duration seconds from its opening (Locust quits itself then); the
        # run time only bounds the whole, signing in included.
        run_time = args.duration
        if args.scenario in RUSHES:
            run_time = int(users / spawn_rate + args.sms_wait + args.duration + 10)
        command = [
            PYTHON, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
            "-u", str(users), "-r", str(spawn_rate), "-t", f"{run_time}s", "--stop-timeout", "5",
            "--host", stack.base_url, "--csv", str(prefix), "--loglevel", "WARNING", "--only-summary", *classes,
        ]  # fmt: skip
        env = {**os.environ, "NOBAT_LOADTEST_FIXTURE": str(fixture_path)}
        before = asyncio.run(booking_counts(stack.database_url))
        log(f"locust: scenario {args.scenario} ({', '.join(classes)}), {users} users for {args.duration} s")
        started = time.perf_counter()
        started_wall = time.time()
        with open(self.workdir / "logs" / "locust.log", "ab") as out:
            done = subprocess.run(
                command,
                check=False,
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=run_time + 300,
            )
        seconds = time.perf_counter() - started
        after = asyncio.run(booking_counts(stack.database_url))
        confirmed = sold(before, after)
        locust = read_locust_csv(prefix)
        outcomes_path = Path(fixture["outcomes_file"])
        outcomes = json.loads(outcomes_path.read_text()) if outcomes_path.exists() else {}
        locust["outcomes"] = outcomes.get("tally", {})
        locust["sms"] = outcomes.get("sms", {})
        codes = outcomes.get("confirmed", [])
        locust["confirmed_codes"] = len(codes)
        # Every booking the service confirmed (a 201, an SMS with its code) is in the record,
        # cancelled or not: a count of rows could not say so (rows of requests still in
        # flight as the load stopped stood in for any lost).
        time.sleep(3)  # the last commits land
        locust["confirmed_not_in_record"] = asyncio.run(workloads.not_in_record(stack.database_url, codes))
        locust["exit_code"] = done.returncode
        locust["seconds"] = round(seconds, 1)
        # Bookings per second of load: of the rush window (from its opening) in a rush.
        window = float(args.duration)
        rush = outcomes.get("rush", {})
        if args.scenario in RUSHES and rush.get("opened_at"):
            window = max(rush["ended_at"] - rush["opened_at"], 1.0)
            locust["rush"] = {
                "signed_in": rush["signed_in"],
                "of": fixture["rush_users"],
                "opened_after_s": round(rush["opened_at"] - started_wall, 1),
                "window_s": round(window, 1),
            }
            locust["rush_window_rps"] = rush_window_rps(prefix, rush["opened_at"], rush["ended_at"])
        locust["bookings_confirmed"] = confirmed
        locust["bookings_confirmed_per_s"] = round(sum(confirmed.values()) / window, 1)
        locust["rush_day"] = rush_day.isoformat()
        locust["hot_offices"] = hot_codes
        locust["sms_queue_after"] = int(redis.llen("rq:queue:sms"))
        self.results["locust"] = locust
        redis.close()
        if not locust.get("aggregated"):
            raise RuntimeError(f"locust produced no statistics; see {self.workdir / 'logs' / 'locust.log'}")

    def too_little_load(self) -> str:
        """Why the Locust phase did not load the service as its scenario means to ("" if it
        did): with the sign-in codes lost (a worker down), the rush opened with few citizens
        signed in, booked almost nothing, and the check passed on an empty record."""
        locust = self.results["locust"]
        reasons = []
        rush = locust.get("rush")
        if rush and rush["signed_in"] < rush["of"]:
            reasons.append(f"{rush['signed_in']} of {rush['of']} rush citizens signed in")
        lost = {name: sms["not_delivered"] for name, sms in locust.get("sms", {}).items() if sms["not_delivered"]}
        if lost:
            reasons.append(f"SMS that never reached the phone: {lost}")
        if not sum(locust.get("bookings_confirmed", {}).values()):
            reasons.append("no booking was confirmed")
        return "; ".join(reasons)

    # --- wrk on the service --------------------------------------------------------------------

    def wrk(
        self,
        name: str,
        base_url: str,
        lines: Any,
        *,
        cap: int,
        profile_pids: list[int] | None = None,
        profile_as: str | None = None,
        duration: int | None = None,
    ) -> WrkResult:
        """One wrk run; with ``profile_pids``, py-spy samples those processes meanwhile and the
        summary is kept under ``profile_as`` (the run's own figures are then not reported:
        py-spy takes CPU from the server it samples)."""
        args = self.args
        duration = duration or args.wrk_duration
        path = self.workdir / f"requests-{name}.tsv"
        count = workloads.write_requests(path, lines)
        recorders = []
        cpu_before = {label: cpu_seconds(pid) for label, pid in self.cpu_pids.items()}
        postmaster = self.pg.postmaster_pid() if self.pg else None
        postgres_before = tree_cpu_seconds(postmaster) if postmaster else None
        wrk_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        wrk_started = time.perf_counter()
        if profile_pids:
            for pid in profile_pids:
                output = self.workdir / f"profile-{name}-{pid}.txt"
                # From 2 s in (connections open, caches warm) to 2 s before wrk stops.
                recorder = profiling.start_recording(pid, output, seconds=max(duration - 4, 2))
                if recorder is None:
                    self.note("py-spy not found (.venv/bin/pip install py-spy): no profile")
                    break
                recorders.append((recorder, output))
        result = run_wrk(
            name,
            base_url,
            path,
            duration=duration,
            threads=args.wrk_threads,
            connections=args.wrk_connections,
            workdir=self.workdir,
        )
        # Cores each server process used: a slow run whose processes idle is waiting on a lock.
        result.cpu = {
            label: round((cpu_seconds(pid) - cpu_before[label]) / result.seconds, 2)
            for label, pid in self.cpu_pids.items()
        }
        # The rest of the 2 cores: the record, and the load generator itself (the only child
        # waited for meanwhile), which takes its share of what the server could have used.
        # wrk's over the whole of its run: its start, which reads the request file, included.
        wrk_wall = time.perf_counter() - wrk_started
        if postmaster and postgres_before is not None and (postgres_after := tree_cpu_seconds(postmaster)):
            result.cpu["PostgreSQL"] = round((postgres_after - postgres_before) / result.seconds, 2)
        wrk_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        wrk_seconds = wrk_after.ru_utime + wrk_after.ru_stime - wrk_before.ru_utime - wrk_before.ru_stime
        result.cpu["wrk"] = round(wrk_seconds / wrk_wall, 2)
        for recorder, _ in recorders:
            try:
                recorder.wait(timeout=30)
            except subprocess.TimeoutExpired:
                recorder.kill()
        if recorders:
            outputs = [output for _, output in recorders]
            self.results.setdefault("profile", {})[profile_as or name] = profiling.summarize(outputs)
            RESULTS.mkdir(parents=True, exist_ok=True)
            for output in outputs:
                if output.exists():
                    # Collapsed stacks (gunzip, then https://www.speedscope.app or flamegraph.pl).
                    (RESULTS / f"{self.stamp}-{output.name}.gz").write_bytes(gzip.compress(output.read_bytes()))
        log(
            f"wrk {name}: {result.rate:,.0f} req/s, {result.ok_rate:,.0f} 2xx/s, p99 {result.latency_ms['p99']:.1f} ms"
            f" ({count:,} requests written, {cap:,}/s cap)"
        )
        return result

    def service_references(self, stack: NobatStack, network: workloads.Network) -> None:
        args = self.args
        redis = Redis.from_url(stack.redis.url)
        today = dt.datetime.now(ZoneInfo(self.tz)).date()
        duration = args.wrk_duration
        candidates = [
            (self.rng.choice(network.offices).code, today + dt.timedelta(days=self.rng.randrange(1, 14)))
            for _ in range(30_000)
        ]
        pairs = workloads.open_office_days(redis, candidates)
        phones = workloads.phones(self.secret, self.rng)
        ids = workloads.national_ids(self.rng, exclude=self.used_ids)
        addresses = workloads.Addresses(self.rng)
        wrk: dict[str, Any] = {}
        count = WRK_RATE_CAP["bookings"] * duration
        reads = WRK_RATE_CAP["reads"] * duration
        # Searches are for today, or the next open day when today is closed (a Friday): a closed
        # day's counters are nearly empty, and read twice as cheaply as a working day's.
        read_day = workloads.first_open_day(redis, network.first_offices()[0], today)
        self.results.setdefault("setup", {})["read_day"] = read_day.isoformat()
        # A rush's reads: everyone near the same few offices (the readers' copy of the counters
        # is for this); the random reads above are the worst case for it.
        hot_reads = [(network.first_offices()[i], read_day) for i in range(3)]
        hot_points = [(network.by_code[code].lat, network.by_code[code].lon) for code, _ in hot_reads]

        def bookings(tag: str, at: list[tuple[str, dt.date]], service: str | None = None) -> Any:
            return workloads.booking_lines(
                count=count, pairs=at, network=network, phones=phones, ids=ids, rng=self.rng,
                addresses=addresses, service=service, tag=tag,
            )  # fmt: skip

        def slots(at: list[tuple[str, dt.date]]) -> Any:
            return workloads.slots_lines(count=reads, pairs=at, network=network, rng=self.rng, addresses=addresses)

        def nearby(points: list[tuple[float, float]] | None = None) -> Any:
            return workloads.nearby_lines(
                count=reads, network=network, rng=self.rng, addresses=addresses, day=read_day, points=points
            )

        stack.stop_rq()
        self.cpu_pids = self.server_pids(stack.web_worker_pids(), stack)
        # Every booking answered 201 must be in the record: the phases make no replays, moves
        # or cancellations, so the rows they add are at least the 201s (more by those whose
        # answer wrk never read, in flight as it stopped).
        recorded_before = asyncio.run(booking_counts(stack.database_url))
        answered = 0
        try:
            quiet = wait_for_quiet(args.quiet_load, args.quiet_wait)
            self.results["machine"]["load_before_wrk"] = round(quiet, 2)
            caps = WRK_RATE_CAP
            spread = self.wrk("bookings_spread", stack.base_url, bookings("spread", pairs), cap=caps["bookings"])
            hot = self.prepare_hot_days(stack, network, redis, today)
            hot_run = self.wrk("bookings_hot", stack.base_url, bookings("hot", hot, "101"), cap=caps["bookings"])
            answered += spread.count("201") + hot_run.count("201")
            wrk["bookings_spread"], wrk["bookings_hot"] = spread.as_dict(), hot_run.as_dict()
            wrk["bookings_hot"]["office_day"] = f"{hot[0][0]} on {', '.join(str(day) for _, day in hot)}"
            wrk["slots"] = self.wrk("slots", stack.base_url, slots(pairs), cap=caps["reads"]).as_dict()
            wrk["nearby"] = self.wrk("nearby", stack.base_url, nearby(), cap=caps["reads"]).as_dict()
            wrk["slots_hot"] = self.wrk("slots_hot", stack.base_url, slots(hot_reads), cap=caps["reads"]).as_dict()
            wrk["nearby_hot"] = self.wrk("nearby_hot", stack.base_url, nearby(hot_points), cap=caps["reads"]).as_dict()
            if args.profile:
                # Profiled again, apart: py-spy takes CPU from the server it samples.
                profiled = {"bookings_spread": bookings("spread-profiled", pairs), "slots": slots(pairs)}
                profiled["nearby"] = nearby()
                for name, lines in profiled.items():
                    run = self.wrk(
                        f"{name}_profiled", stack.base_url, lines, cap=caps["reads"], duration=10,
                        profile_pids=stack.web_worker_pids(), profile_as=name,
                    )  # fmt: skip
                    answered += run.count("201") if name.startswith("bookings") else 0
        finally:
            stack.start_rq()
            redis.close()
        self.results["wrk_service"] = wrk
        recorded = sum(sold(recorded_before, asyncio.run(booking_counts(stack.database_url))).values())
        self.results["wrk_bookings"] = {"answered_201": answered, "recorded": recorded}

    def sms_drain(self, stack: NobatStack, seconds: float = 10) -> None:
        """How fast the RQ worker sends what the scenario queued: the queue's depth 10 s apart."""
        redis = Redis.from_url(stack.redis.url)
        try:
            first = int(redis.llen("rq:queue:sms"))
            if first < 20:
                return
            time.sleep(seconds)
            second = int(redis.llen("rq:queue:sms"))
        finally:
            redis.close()
        if second >= first:
            # Jobs enqueued after their commit are still arriving: no drain rate to read.
            log(f"SMS: {first:,} queued after the scenario, still growing 10 s later ({second:,})")
            return
        rate = (first - second) / seconds
        self.results["locust"]["sms_sent_per_s"] = round(rate, 1)
        log(f"SMS: {first:,} queued after the scenario, sent at {rate:,.1f}/s by {len(stack.rq)} RQ worker(s)")

    def server_pids(self, workers: list[int], stack: NobatStack) -> dict[str, int]:
        pids = {f"worker {number + 1}": pid for number, pid in enumerate(workers)}
        if stack.redis.process is not None:
            pids["redis-server"] = stack.redis.process.pid
        return pids

    def prepare_hot_days(
        self, stack: NobatStack, network: workloads.Network, redis: Redis, today: dt.date, *, days: int = 3
    ) -> list[tuple[str, dt.date]]:
        """Office-days big enough for a hot run: the clerk of one office opens ``days`` of its
        days 24 hours, 5-minute slots, 100 seats each (28,800 seats a day, the most a plan
        allows; one day alone fills in 10 seconds now), through the console API like any
        capacity change."""
        code = network.first_offices()[0]
        rush_day = self.results.get("locust", {}).get("rush_day")
        open_ = [
            d for d in workloads.open_days(redis, code, today + dt.timedelta(days=2), 12) if d.isoformat() != rush_day
        ]
        headers = {"X-Forwarded-For": "10.255.0.1"}
        status, body = http_json(
            "POST",
            stack.base_url + "/api/v1/staff/login",
            {"username": f"staff-{code}", "password": f"demo-{code}-pass"},
            headers,
        )
        if status != 200:
            raise RuntimeError(f"staff login for the hot office failed: {status} {body}")
        headers["Authorization"] = f"Bearer {body['access_token']}"
        rules = {
            "rules": [{"opens": "00:00", "closes": "24:00", "slot_minutes": 5, "seats": 100}],
            "reason": "load test: the hot office-day",
        }
        for day in open_[:days]:
            status, body = http_json(
                "PUT", f"{stack.base_url}/api/v1/staff/offices/{code}/overrides/{day.isoformat()}", rules, headers
            )
            if status != 200:
                raise RuntimeError(f"the hot office-day could not be opened: {status} {body}")
        return [(code, day) for day in open_[:days]]

    # --- references outside the service --------------------------------------------------------

    def bare_reserve(self, stack: NobatStack) -> None:
        args = self.args
        redis = Redis.from_url(stack.redis.url)
        day = dt.datetime.now(ZoneInfo(self.tz)).date() + dt.timedelta(days=1)
        codes = [f"B{i:05d}" for i in range(1000)]
        with redis.pipeline(transaction=False) as pipe:
            for code in codes:
                pipe.hset(bench_day_key(code, day.isoformat()), mapping=bench_day_fields(day_slots()))
                pipe.expire(bench_day_key(code, day.isoformat()), 3 * 86400)
            pipe.execute()
        port = free_port()
        server = Process(
            "bare-reserve",
            uvicorn_args("loadtests.bare_reserve:app_from_env", port=port, workers=args.workers),
            env={**stack.env},
            log_dir=stack.logs,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_port_http(base, server)
            self.cpu_pids = self.server_pids(children_of(server.pid), stack)
            count = WRK_RATE_CAP["bare"] * args.wrk_duration
            results = {
                "spread": self.wrk(
                    "bare_reserve_spread",
                    base,
                    workloads.reserve_lines(count=count, offices=codes, day=day, rng=self.rng, tag="bs"),
                    cap=WRK_RATE_CAP["bare"],
                ).as_dict(),
                "hot": self.wrk(
                    "bare_reserve_hot",
                    base,
                    workloads.reserve_lines(count=count, offices=codes[:1], day=day, rng=self.rng, tag="bh"),
                    cap=WRK_RATE_CAP["bare"],
                ).as_dict(),
            }
        finally:
            server.stop()
            ceiling.drop_bench_keys(redis)
            redis.close()
        self.results["bare_reserve"] = results

    def redis_ceiling(self, stack: NobatStack) -> None:
        day = dt.datetime.now(ZoneInfo(self.tz)).date() + dt.timedelta(days=1)
        log("ceiling: RESERVE straight against Redis (redis-benchmark, pipelined redis-py)")
        result = ceiling.measure(stack.redis.url, day=day, calls=self.args.ceiling_calls)
        self.results["ceiling"] = result.as_dict()
        log(f"ceiling: {result.reserve_rate:,.0f} RESERVE/s")

    def pg_baseline(self) -> None:
        args = self.args
        if self.pg is None:
            self.pg = PgCluster(pg_workdir()).start()
        self.pg.psql("CREATE DATABASE baseline")
        dsn = self.pg.dsn.rsplit("/", 1)[0] + "/baseline"
        self.pg.psql(SCHEMA, database="baseline")
        port = free_port()
        server = Process(
            "pg-baseline",
            uvicorn_args("loadtests.pg_baseline:app_from_env", port=port, workers=args.workers),
            env={**os.environ, "PG_DSN": dsn},
            log_dir=self.workdir / "logs",
        )
        base = f"http://127.0.0.1:{port}"
        ids = workloads.national_ids(self.rng, exclude=self.used_ids)
        count = WRK_RATE_CAP["pg"] * args.wrk_duration
        try:
            wait_port_http(base, server)
            self.cpu_pids = {f"worker {n + 1}": pid for n, pid in enumerate(children_of(server.pid))}
            results = {
                "hot": self.wrk(
                    "pg_hot",
                    base,
                    workloads.pg_lines(count=count, slot_ids=[HOT_SLOT], ids=ids, rng=self.rng),
                    cap=WRK_RATE_CAP["pg"],
                ).as_dict(),
                "spread": self.wrk(
                    "pg_spread",
                    base,
                    workloads.pg_lines(count=count, slot_ids=list(range(1, SLOTS + 1)), ids=ids, rng=self.rng),
                    cap=WRK_RATE_CAP["pg"],
                ).as_dict(),
            }
        finally:
            server.stop()
        self.results["pg_baseline"] = results

    # --- the whole run -------------------------------------------------------------------------

    def execute(self) -> int:
        args = self.args
        self.stamp = time.strftime("%Y%m%d-%H%M%S")
        log(f"work directory {self.workdir}; load average {load_average():.2f} on {os.cpu_count()} cores")
        exit_code = 0
        try:
            stack = self.start_service()
            network = asyncio.run(workloads.load_network(stack.database_url))
            self.locust(stack, network)
            if code := self.results["locust"]["exit_code"]:
                # A failure by the locustfile's rules (a 5xx, no answer, a refusal it did not
                # expect) or a user whose task raised.
                self.note(f"Locust exited {code}: failures or exceptions (see the Locust tables and logs/locust.log)")
                exit_code = 1
            if missing := self.results["locust"]["confirmed_not_in_record"]:
                self.note(
                    f"LOST: {len(missing):,} of {self.results['locust']['confirmed_codes']:,} bookings confirmed"
                    f" to Locust's users are not in the record (first: {', '.join(missing[:5])})"
                )
                exit_code = 1
            if unloaded := self.too_little_load():
                self.note(f"NOT LOADED: {unloaded}")
                exit_code = 1
            self.sms_drain(stack)
            if args.references != "none" and wrk_binary():
                try:
                    self.service_references(stack, network)
                except Exception as error:  # the check below still runs: Locust's phase is checked
                    self.results["error"] = f"{type(error).__name__}: {error}"
                    self.note(f"the service's wrk phases failed ({self.results['error']}): no references")
                    exit_code = exit_code or 2  # a LOST found before stays the run's answer
                else:
                    bookings = self.results["wrk_bookings"]
                    if bookings["recorded"] < bookings["answered_201"]:
                        self.note(
                            f"LOST: wrk's phases were answered 201 for {bookings['answered_201']:,} bookings, "
                            f"and the record gained {bookings['recorded']:,}"
                        )
                        exit_code = 1
            elif args.references != "none":
                self.note("wrk is not installed: no references (apt-get install -y wrk)")
            # Bookings still on their way when the load stopped commit within moments.
            time.sleep(3)
            redis = Redis.from_url(stack.redis.url)
            limits = workloads.service_settings()
            log("correctness check: every slot's bookings in SQL against Redis, every citizen's limits")
            result = check.check(
                database_url=stack.database_url,
                redis_url=stack.redis.url,
                tz=self.tz,
                horizon_days=limits.horizon_days,
                max_active=limits.max_active_bookings,
                per_mobile=limits.bookings_per_mobile,
                first_day=self.first_day,
            )
            self.results["check"] = result.as_dict()
            after = memory.by_kind(redis)
            bookings = result.seats_booked_sql
            self.results["memory"].update(
                after_run_used_memory=memory.used_memory(redis),
                after_run_by_kind=after,
                projection=memory.projection(
                    dataset_bytes=self.results["memory"]["dataset_used_memory"],
                    after=after,
                    before=self.memory_before,
                    bookings=bookings,
                    seats_total=result.seats_total,
                    horizon_days=limits.horizon_days,
                ),
            )
            redis.close()
            log(
                f"check: {'OK' if result.ok else 'FAILED'} ({result.slots:,} slots, {result.seats_booked_sql:,} seats booked)"
            )
            if not result.ok:
                exit_code = 1
            stack.stop_web()
            for worker in stack.rq:
                worker.stop()
            stack.rq = []
            if args.references == "all" and wrk_binary():
                self.bare_reserve(stack)
                self.redis_ceiling(stack)
                try:
                    self.pg_baseline()
                except (RuntimeError, OSError, subprocess.SubprocessError) as error:
                    self.note(f"PostgreSQL baseline not measured: {error}")
            elif args.references == "all":
                self.redis_ceiling(stack)
        except Exception as error:
            self.results["error"] = f"{type(error).__name__}: {error}"
            log(f"run failed: {self.results['error']}")
            exit_code = exit_code or 2
        finally:
            self.results["machine"]["load_at_end"] = round(load_average(), 2)
            self.results["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            self.results["exit_code"] = exit_code
            if self.stack is not None and not args.keep:
                self.stack.stop()
            if self.pg is not None and not args.keep:
                self.pg.stop()
            paths = report.write(self.results, RESULTS, f"{self.stamp}-{args.scenario}")
            log(f"results: {paths[0]} and {paths[1]}")
            if args.keep:
                log(f"kept running: {self.workdir}")
            elif exit_code:
                log(f"logs and data kept for a look: {self.workdir}")
            else:
                # The record, Redis's files and wrk's request files: hundreds of MB.
                shutil.rmtree(self.workdir, ignore_errors=True)
                if self.pg is not None:
                    shutil.rmtree(self.pg.workdir, ignore_errors=True)
        return exit_code


def children_of(pid: int) -> list[int]:
    """uvicorn's worker processes (not its multiprocessing resource tracker)."""
    try:
        pids = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return [p for p in pids if b"resource_tracker" not in Path(f"/proc/{p}/cmdline").read_bytes()]


def wait_port_http(base: str, server: Process) -> None:
    """The reference servers answer 405 to a GET: any HTTP answer means they are up."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"{server.name} exited:\n{server.tail()}")
        try:
            urllib.request.urlopen(base + "/", timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{server.name} did not start")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtests.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="rush")
    parser.add_argument("--users", type=int, default=200, help="Locust users (default 200)")
    parser.add_argument("--duration", type=int, default=60, help="seconds of Locust load (default 60)")
    parser.add_argument("--spawn-rate", type=float, default=None, help="users started per second (default users/10)")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes (default 2)")
    parser.add_argument(
        "--staff-workers",
        type=int,
        default=1,
        help="uvicorn workers of the staff instance the clerks use (default 1; 0: clerks share the citizens' instance)",
    )
    parser.add_argument("--rq-workers", type=int, default=1)
    parser.add_argument(
        "--hot-offices", type=int, default=3, help="offices of the rush (first office of each province)"
    )
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--sms-backend", choices=["console", "twilio"], default="console")
    parser.add_argument("--tz", default="auto", help="NOBAT_TZ for the service; auto: a zone where it is 06:00 now")
    parser.add_argument(
        "--references",
        choices=["all", "service", "none"],
        default="all",
        help="all: wrk on the service, the Redis ceiling, the bare endpoint, PostgreSQL; service: wrk on the service only",
    )
    parser.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="py-spy on the workers, in a short run of its own after the measured ones",
    )
    parser.add_argument("--wrk-duration", type=int, default=15)
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--wrk-connections", type=int, default=64)
    parser.add_argument("--ceiling-calls", type=int, default=300_000)
    parser.add_argument(
        "--quiet-load", type=float, default=1.0, help="wait for the 1-min load to drop below this before wrk"
    )
    parser.add_argument("--quiet-wait", type=int, default=120, help="at most this many seconds")
    parser.add_argument("--sms-wait", type=int, default=120, help="seconds a phone waits for its sign-in code")
    parser.add_argument("--seed", type=int, default=1405)
    parser.add_argument("--keep", action="store_true", help="leave the processes and the directory for a look")
    args = parser.parse_args(argv)
    if args.users < 1 or args.duration < 1 or args.wrk_duration < 5:
        parser.error("users and duration must be positive; --wrk-duration at least 5")
    return args


def main(argv: list[str] | None = None) -> None:
    sys.exit(Run(parse_args(argv)).execute())


if __name__ == "__main__":
    main()
