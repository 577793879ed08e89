"""Logs, metrics and the request id: what an engineer paged at night reads.

- Logs are one JSON object per line, with the request id of the request that wrote them.
- Personal data (national IDs, mobiles) never reaches a log line: a filter masks any it finds.
- /metrics serves Prometheus metrics: HTTP (Litestar's middleware), bookings, rejections by
  reason, Lua latency, the SMS queue, failed SMS and restricted offices.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import func, select

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
RESTRICTED = Gauge("nobat_offices", "Offices by status", ["status"], multiprocess_mode="mostrecent")


@asynccontextmanager
async def timed(script: str) -> AsyncIterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        LUA_SECONDS.labels(script).observe(time.perf_counter() - started)


# --- logs ---

_NATIONAL_ID = re.compile(r"(?<![0-9])[0-9]{10}(?![0-9])")
_MOBILE = re.compile(r"(?:\+98|0098|0)?9[0-9]{9}(?![0-9])")


def mask(text: str) -> str:
    return _NATIONAL_ID.sub("**********", _MOBILE.sub("09*********", text))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "at": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": mask(record.getMessage()),
            "request_id": request_id.get(),
        }
        if record.exc_info:
            entry["error"] = mask(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


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


def request_id_middleware(app: ASGIApp) -> ASGIApp:
    """Take the caller's X-Request-ID (from the load balancer) or make one; echo it back."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if 0 < len(incoming) <= 64 and incoming.isprintable() else uuid.uuid4().hex
        token = request_id.set(rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)

    return middleware


# --- metrics ---


async def refresh(container: Any) -> None:
    """Gauges read at scrape time, from the record and the job queue."""
    from app.offices.models import Office
    from app.sms.models import SmsMessage, SmsStatus

    async with container.sessions() as session:
        for status, count in await session.execute(select(Office.status, func.count()).group_by(Office.status)):
            RESTRICTED.labels(getattr(status, "value", status)).set(count)
        rows = dict(
            (getattr(status, "value", status), count)
            for status, count in await session.execute(
                select(SmsMessage.status, func.count())
                .where(SmsMessage.status.in_((SmsStatus.FAILED, SmsStatus.QUEUED, SmsStatus.SENDING)))
                .group_by(SmsMessage.status)
            )
        )
    SMS_FAILED.set(rows.get("failed", 0))
    SMS_UNSENT.set(rows.get("queued", 0) + rows.get("sending", 0))
    SMS_QUEUE.set(await _queue_length(container))


async def _queue_length(container: Any) -> int:
    import asyncio

    try:
        return int(await asyncio.to_thread(lambda: len(container.jobs.sms)))
    except Exception:
        return -1
