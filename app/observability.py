"""Logs, metrics and the request id: what an engineer paged at night reads.

- Logs are one JSON object per line, with the request id of the request that wrote them.
- Personal data (national IDs, mobiles) never reaches a log line: a filter masks any it finds.
- /metrics serves Prometheus metrics: HTTP (Litestar's middleware), bookings, rejections by
  reason, Lua latency, the SMS queue, failed SMS and restricted offices.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import json
import logging
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from app.locale import DIGIT

log = logging.getLogger(__name__)

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

BOOKINGS = Counter("nobat_bookings_total", "Confirmed bookings", ["channel"])
REJECTIONS = Counter("nobat_booking_rejections_total", "Refused bookings by reason (the problem code)", ["reason"])
LUA_SECONDS = Histogram(
    "nobat_lua_seconds",
    "Latency of the capacity scripts",
    ["script"],
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
)
# These gauges are read from shared state at each scrape, so with several worker processes
# (PROMETHEUS_MULTIPROC_DIR) any process's latest value is the value: "mostrecent".
SMS_QUEUE = Gauge("nobat_sms_queue_depth", "Jobs waiting in the SMS queue", multiprocess_mode="mostrecent")
SMS_FAILED = Gauge("nobat_sms_failed", "Outbound SMS given up on", multiprocess_mode="mostrecent")
SMS_UNSENT = Gauge("nobat_sms_unsent", "Outbound SMS committed and not yet sent", multiprocess_mode="mostrecent")
SMS_COUNTED = 100_000
"""The most SMS of one status a scrape counts (``refresh``): the failed and unsent read at most this."""
QUEUE_DEPTH = Gauge(
    "nobat_queue_depth",
    "Jobs waiting in each RQ queue (codes: sign-in codes; sms: other messages; default: the rest)",
    ["queue"],
    multiprocess_mode="mostrecent",
)
RESTRICTED = Gauge("nobat_offices", "Offices by status", ["status"], multiprocess_mode="mostrecent")
JOB_DONE = Gauge(
    "nobat_job_last_success_timestamp_seconds",
    "When each periodic job last ended well (unix time): alert when it stops moving",
    ["job"],
    multiprocess_mode="mostrecent",
)
TO_SETTLE = Gauge(
    "nobat_commits_to_settle",
    "Bookings and promotions whose commit's answer was lost, their seats held until the record says (-1: unread)",
    ["kind"],
    multiprocess_mode="mostrecent",
)


# --- logs ---

# Latin, Persian and Arabic-Indic digits: a citizen's own text (a complaint's description, in
# a failed statement's parameters) writes numbers in Persian, and a mobile in groups.
_NATIONAL_ID = re.compile(rf"(?<!{DIGIT}){DIGIT}{{10}}(?!{DIGIT})")
_ZERO, _EIGHT, _NINE = "[0\u06f0\u0660]", "[8\u06f8\u0668]", "[9\u06f9\u0669]"
_MOBILE = re.compile(
    rf"(?<![0-9A-Za-z\u06f0-\u06f9\u0660-\u0669+(])\(?(?:(?:\+|%2[Bb]|{_ZERO}{_ZERO})?{_NINE}{_EIGHT}[ ()-]*|{_ZERO})?"
    rf"\(?{_NINE}{DIGIT}{{2}}\)?[ -]?{DIGIT}{{3}}[ -]?{DIGIT}{{4}}(?!{DIGIT})"
)  # every way normalize_mobile reads one (0912 123 4567, +98 (912) 123-4567, 00989121234567, in
# any digits), and "%2B98…" in a URL's query (Twilio's, asked which messages went to a number);
# not "9 500 000 000" rials, nor the middle of a longer number


# A phone's invisible marks (direction marks and isolates, ZWNJ), as themselves or as a repr
# writes them (``\u2066``), beside a digit: inside or around a number they hid it from the
# patterns, and citizens' own text keeps them (a number copied on a phone comes wrapped in
# them). Dropped after a first pass, which masks the numbers they bound: dropped first, two
# numbers with only marks between them ran together into one too long for either pattern.
_MARK = r"(?:[\u200c-\u200f\u202a-\u202e\u2066-\u2069]|\\u(?:200[c-f]|202[a-e]|206[6-9]))"
_MARKS_BY_DIGITS = re.compile(rf"{_MARK}+(?={DIGIT})|(?<={DIGIT}){_MARK}+")
# A national ID as printed on the card (049-937089-9), or so spaced.
_GROUPED_NATIONAL_ID = re.compile(rf"(?<!{DIGIT}){DIGIT}{{3}}[ -]{DIGIT}{{6}}[ -]{DIGIT}(?!{DIGIT})")


def _masked(text: str) -> str:
    text = _GROUPED_NATIONAL_ID.sub("**********", text)
    return _NATIONAL_ID.sub("**********", _MOBILE.sub("09*********", text))


def mask(text: str) -> str:
    return _masked(_MARKS_BY_DIGITS.sub("", _masked(text)))


# A tracking code (app.booking.tracking) or a complaint's code in the access log, where a path
# or a query names one: whoever reads the logs would read every booking and complaint they
# name (GET /api/v1/bookings/{code} is anyone's with the code). After those names only: any
# ten letters had starred the route "/api/v1/complaints" itself. The whole step, as a code
# may be typed with hyphens, spaces or its look-alikes (app.booking.tracking reads them all).
# Also in a sign-in's "next" (%2Fbookings%2F...); not an office's or a service's code
# (office_code=), nor the page /complaints/new.
_CODE_IN_PATH = re.compile(
    r"(?:(?<=/bookings/)|(?<=/complaints/)|(?<=/queue/)|(?<=[?&]code=)|(?<=tracking_code=)"
    r"|(?<=[?&]tracking=)|(?<=%26tracking%3[Dd])"
    r"|(?<=%2[Ff]bookings%2[Ff])|(?<=%2[Ff]complaints%2[Ff]))(?!new(?:[/?&#\s]|$))[^/?&#\s]+"
)


class JsonFormatter(logging.Formatter):
    # UTC, to the millisecond, in every process: the cron process takes the offices' zone as
    # its own (rq's cron reads local time), and its lines had read 3.5 hours apart from the
    # web's and the workers' in one log.
    converter = staticmethod(time.gmtime)

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name == "uvicorn.access":
            message = _CODE_IN_PATH.sub("**********", message)
        entry: dict[str, Any] = {
            "at": f"{self.formatTime(record, '%Y-%m-%dT%H:%M:%S')}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": mask(message),
            "request_id": request_id.get(),
        }
        if record.exc_info:
            entry["error"] = mask(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


LOG_CONFIG = Path(__file__).with_name("log-config.json")
"""``configure_logging`` for uvicorn's own process (``--log-config app/log-config.json``): with
``--workers``, the parent that restarts a dead worker never loads the app, and its lines
("Child process ... died") had been plain text among the JSON."""


def configure_logging(level: int = logging.INFO) -> None:
    """Every log line of the process as masked JSON on stderr: ours, Litestar's, RQ's and
    uvicorn's (whose access log would otherwise print URLs, mobiles in them, in clear)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "litestar", "rq.worker"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # Twilio's client logs each request's URL and headers at INFO: a citizen's number, and
    # nothing an operator needs that our own lines about the message do not say.
    logging.getLogger("twilio").setLevel(logging.WARNING)


class _RequestIds:
    """Request ids without a call into the kernel's randomness per request: a random prefix
    per process and a counter (32 hex digits, like a uuid4's)."""

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


_request_ids = _RequestIds()

# HTTP metrics, under the names Litestar's Prometheus plugin used (dashboards keep working).
_HTTP_LABELS = ["method", "path", "status_code", "app_name"]
HTTP_REQUESTS = Counter("nobat_http_requests_total", "Total requests", _HTTP_LABELS)
HTTP_ERRORS = Counter("nobat_http_requests_error_total", "Total errors in requests", _HTTP_LABELS)
HTTP_SECONDS = Histogram("nobat_http_request_duration_seconds", "Request duration, in seconds", _HTTP_LABELS)
HTTP_IN_PROGRESS = Gauge(
    "nobat_http_requests_in_progress", "Total requests currently in progress", _HTTP_LABELS, multiprocess_mode="livesum"
)
_UNOBSERVED = ("/metrics", "/health")  # the scraper and the probes would only drown the rest


def observe_requests(app: ASGIApp) -> ASGIApp:
    """The request id and the HTTP metrics of every request, in one layer.

    The id is the caller's X-Request-ID (from the load balancer) or a new one, echoed back
    and put on every log line the request writes. Two layers of Litestar (its Prometheus
    middleware and a request-id middleware) had cost a tenth of a booking's CPU; this one
    keeps each route's metric children at hand instead of looking them up by label dicts.
    """
    children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
    in_progress: dict[tuple[str, str], Any] = {}

    def finished(method: str, path: str, status: int, seconds: float) -> None:
        child = children.get((method, path, status))
        if child is None:
            labels = (method, path, status, "nobat")
            child = children[(method, path, status)] = (HTTP_REQUESTS.labels(*labels), HTTP_SECONDS.labels(*labels))
        child[0].inc()
        child[1].observe(seconds)
        if status >= 500:
            HTTP_ERRORS.labels(method, path, status, "nobat").inc()

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        rid = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                if 0 < len(incoming) <= 64 and incoming.isprintable():
                    rid = incoming
                break
        rid = rid or _request_ids.next()
        header = (b"x-request-id", rid.encode())
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        token = request_id.set(rid)
        method, path = str(scope.get("method", "GET")), scope.get("path_template", scope["path"])
        gauge = None
        if not scope["path"].startswith(_UNOBSERVED):
            gauge = in_progress.get((method, path))
            if gauge is None:
                gauge = in_progress[(method, path)] = HTTP_IN_PROGRESS.labels(method, path, 200, "nobat")
            gauge.inc()
        started = time.perf_counter()
        try:
            await app(scope, receive, send_with_id)
        except BaseException as error:
            # Refusals are raised and answered by Litestar's exception layer, outside this one.
            status = int(getattr(error, "status_code", 0) or getattr(error, "status", 500))
            raise
        finally:
            request_id.reset(token)
            if gauge is not None:
                gauge.dec()
                finished(method, path, status, time.perf_counter() - started)

    return middleware


# --- metrics ---

RECORD_SECONDS = 2.0
"""How long a scrape waits for the record's counts before it answers without them."""


def forget_dead_workers(directory: str) -> list[int]:
    """Drop the live gauges (requests in progress) of worker processes that are gone: one
    killed mid-request (out of memory, a crash) left its requests in progress for ever, for
    a live gauge is summed over every process's file until the process is marked dead, and
    the server that restarts workers does not. The pids dropped."""
    from prometheus_client import multiprocess

    pids = {path.stem.rpartition("_")[2] for path in Path(directory).glob("gauge_live*_*.db")}
    dead = sorted(int(pid) for pid in pids if pid.isdigit() and not _alive(int(pid)))
    for pid in dead:
        multiprocess.mark_process_dead(pid, directory)
    return dead


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # no signal sent: only asks whether the process is there
    except ProcessLookupError:
        return False
    except PermissionError:  # there, another user's
        return True
    return True


async def refresh(container: Any) -> None:
    """Gauges read at scrape time, from the record and the job queue."""
    from app.offices.models import Office, OfficeStatus
    from app.sms.models import SmsMessage, SmsStatus

    try:
        # Bounded, and its failure kept to these gauges: the scrape had failed whole while the
        # record was in trouble (a 503, or the pool's 30 s wait past the scrape's timeout),
        # losing the request counts and the 503s the on-call engineer needed then most.
        async with asyncio.timeout(RECORD_SECONDS), container.sessions() as session:
            offices = dict.fromkeys((status.value for status in OfficeStatus), 0)  # none left: 0, not the last count
            for status, count in await session.execute(select(Office.status, func.count()).group_by(Office.status)):
                offices[getattr(status, "value", status)] = count
            # Each counted up to SMS_COUNTED at most: every scrape of every instance had counted
            # the evening's backlog of reminders whole (hundreds of thousands of rows, on the
            # primary, every 15 s). Past it, the gauge says "that many or more": the alert's.
            rows = {}
            for status in (SmsStatus.FAILED, SmsStatus.QUEUED, SmsStatus.SENDING):
                some = select(SmsMessage.id).where(SmsMessage.status == status).limit(SMS_COUNTED).subquery()
                rows[status.value] = await session.scalar(select(func.count()).select_from(some)) or 0
    except (SQLAlchemyError, OSError, TimeoutError):
        log.warning("metrics: the record did not answer; its gauges read -1", exc_info=True)
        # Every office count too: left at its last value, a count of blocked offices read
        # as today's while the record was away.
        offices = dict.fromkeys((status.value for status in OfficeStatus), -1)
        rows = {"failed": -1, "queued": -1, "sending": 0}
    for status, count in offices.items():
        RESTRICTED.labels(status).set(count)
    SMS_FAILED.set(rows.get("failed", 0))
    SMS_UNSENT.set(rows.get("queued", 0) + rows.get("sending", 0))
    depths = await _queue_lengths(container)
    SMS_QUEUE.set(depths.get("sms", -1))
    for queue, depth in depths.items():
        QUEUE_DEPTH.labels(queue).set(depth)
    for kind, left in (await _left_to_settle(container)).items():
        TO_SETTLE.labels(kind).set(left)
    for job, at in (await _jobs_done(container)).items():
        JOB_DONE.labels(job).set(at)


async def _left_to_settle(container: Any) -> dict[str, int]:
    """What the minute's job has left to settle (app.booking.service): after a database
    failover, these seats are held for nobody until the record can say."""
    from redis.exceptions import RedisError

    from app.capacity import keys

    redis = container.capacity.redis
    try:
        return {
            "bookings": int(await redis.hlen(keys.BOOKINGS_TO_SETTLE)),
            "promotions": int(await redis.hlen(keys.PROMOTIONS_TO_SETTLE)),
        }
    except RedisError:
        return {"bookings": -1, "promotions": -1}


async def _jobs_done(container: Any) -> dict[str, int]:
    """When each periodic job last ended well (app.sms.tasks), as the job queues' Redis has it."""
    from app.capacity import keys

    def read() -> dict[str, int]:
        done = container.jobs.redis.hgetall(keys.JOBS_DONE)
        return {name.decode(): int(at) for name, at in done.items()}

    try:
        return await asyncio.to_thread(read)
    except Exception:  # no job Redis (tests without one), or it is away: the times stay as they were
        return {}


async def _queue_lengths(container: Any) -> dict[str, int]:
    """Jobs waiting in each queue (-1: its Redis did not answer). A backlog of sign-in codes
    had shown nowhere: only the messages' queue was counted."""
    jobs = container.jobs
    queues = (jobs.codes, jobs.sms, jobs.default)
    try:
        return await asyncio.to_thread(lambda: {queue.name: len(queue) for queue in queues})
    except Exception:
        return dict.fromkeys((queue.name for queue in queues), -1)
