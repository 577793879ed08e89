"""Metrics, request ids, log masking and the per-address API limit."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis import Redis as SyncRedis

from app.main import create_app
from app.observability import JsonFormatter, configure_logging, mask
from app.settings import Settings
from tests.conftest import World, booking_body

Client = AsyncTestClient[Litestar]


async def test_metrics_count_bookings_and_rejections(client: Client, world: World) -> None:
    office = await world.office(seats=1)
    day = world.tomorrow()
    for _ in range(2):
        await client.post(
            "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
        )
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    text = metrics.text
    assert 'nobat_bookings_total{channel="web"}' in text
    assert 'nobat_booking_rejections_total{reason="slot_full"}' in text
    assert 'nobat_lua_seconds_count{script="reserve"}' in text
    assert 'nobat_offices{status="active"} 1.0' in text
    assert "nobat_sms_unsent" in text and "nobat_http_requests_total" in text
    assert 'nobat_commits_to_settle{kind="bookings"} 0.0' in text
    # Each answer under its own status and the route's template (not the office's code).
    assert 'method="POST",path="/api/v1/bookings",status_code="201"' in text
    assert 'method="POST",path="/api/v1/bookings",status_code="409"' in text
    assert 'nobat_http_request_duration_seconds_count{app_name="nobat",method="POST",path="/api/v1/bookings"' in text


async def test_request_id_is_echoed_or_made(client: Client) -> None:
    given = await client.get("/health/live", headers={"X-Request-ID": "lb-123"})
    assert given.headers["x-request-id"] == "lb-123"
    made = await client.get("/health/live")
    assert len(made.headers["x-request-id"]) == 32


def test_logs_are_json_without_personal_data() -> None:
    record = logging.LogRecord("t", logging.INFO, "f", 1, "booked for 0499370899 from +989121234567", None, None)
    line = JsonFormatter().format(record)
    assert "0499370899" not in line and "9121234567" not in line
    assert '"level": "info"' in line and '"request_id"' in line
    assert mask("office 010001 slot 10:00") == "office 010001 slot 10:00"


def test_log_times_are_utc_in_every_process_whatever_its_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cron process sets TZ to the offices' zone; its lines must still line up with the rest."""
    record = logging.LogRecord("t", logging.INFO, "f", 1, "m", None, None)
    record.created, record.msecs = 1_796_000_000.25, 250.0  # 2026-11-30T00:53:20.250 UTC
    monkeypatch.setenv("TZ", "Asia/Tehran")
    time.tzset()
    try:
        line = json.loads(JsonFormatter().format(record))
    finally:
        monkeypatch.undo()
        time.tzset()
    assert line["at"] == "2026-11-30T00:53:20.250Z"


def test_numbers_a_citizen_typed_in_persian_or_in_groups_are_masked_too() -> None:
    """A complaint's description (in a failed statement's parameters, in a traceback) has a
    citizen's own writing: Persian digits, a mobile in groups. They went to the logs in clear."""
    assert mask("شمارهٔ من ۰۹۱۲۱۲۳۴۵۶۷ است") == "شمارهٔ من 09********* است"
    assert mask("call 0912 123 4567 or 0912-123-4567") == "call 09********* or 09*********"
    assert mask("from 989121234567, ۹۸۹۱۲۱۲۳۴۵۶۷ or 98 912 123 4567") == "from 09*********, 09********* or 09*********"
    for written in ("۰۰۹۸۹۱۲۱۲۳۴۵۶۷", "٠٠٩٨٩١٢١٢٣٤٥٦٧", "(0912) 123 4567", "+98(912)1234567", "+۹۸9121234567"):
        assert mask(f"to {written}.") == "to 09*********.", written  # as normalize_mobile reads them
    assert mask("کد ملی ۰۴۹۹۳۷۰۸۹۹") == "کد ملی **********"
    # A number in a URL's query, as Twilio's client and urllib3's errors write it.
    assert mask("Messages.json?To=%2B989121234567&PageSize=50") == "Messages.json?To=09*********&PageSize=50"
    assert mask("at 2026-12-06 19:43:13, 9 slots, office 010001") == "at 2026-12-06 19:43:13, 9 slots, office 010001"
    for kept in ("9 500 000 000 rials", "years 1399-1400-1401", "id a9123-4567-89ab"):  # not mobiles
        assert mask(kept) == kept
    # Wrapped in a phone's invisible marks (as themselves, or as a repr writes them), or as
    # the card prints an ID: they passed through in clear.
    for written in (
        "a \u206609121234567\u2069 b",
        repr("\u206609121234567\u2069"),
        "۰۹۱۲\u200c۱۲۳۴۵۶۷",
        "\u206609121234567\u2069\u20660499370899\u2069",  # two, with only marks between them
        "09121234567\u200f0499370899",
    ):
        masked = mask(written)
        assert "09*********" in masked and not any(d in masked for d in "1234567۱۲۳۴۵۶۷"), (written, masked)
    assert mask("ID 049-937089-9, or 049 937089 9") == "ID **********, or **********"
    assert mask("می\u200cشود") == "می\u200cشود"  # a ZWNJ between letters stays


async def test_a_running_app_logs_masked_json_lines_with_the_request_id(
    settings: Settings, capfd: pytest.CaptureFixture[str]
) -> None:
    """As served: the app's startup must not swap the JSON handler for plain lines, and
    uvicorn's access log goes through it too."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging()
        async with AsyncTestClient(create_app(settings)) as client:
            await client.get("/health/live", headers={"X-Request-ID": "lb-7"})
            logging.getLogger("app.test").warning("booked for 0499370899 from 09121234567")
            logging.getLogger("uvicorn.access").info('"GET /signin/code?mobile=09125550001 HTTP/1.1" 200')
            access_log = logging.getLogger("uvicorn.access")
            for path in (
                "/api/v1/bookings/7KQ2MX9PTA",
                "/bookings/7kq2mx9pta/cancel?x=1",
                "/b?code=7KQ2MX9PTA",
                "/api/v1/bookings/7KQ2M-X9PTA",
                "/b?code=7KQ2M+X9PTA&x=1",
                "/api/v1/bookings/7KQ2M%20X9PTA",
                "/signin?next=%2Fbookings%2F7KQ2MX9PTA%2Fcancel",
                "/office/010011/queue?notice=checked_in&tracking=7KQ2MX9PTA",
                "/office/signin?next=%2Foffice%2F010011%2Fqueue%3Fnotice%3Dserved%26tracking%3D7KQ2MX9PTA",
            ):
                access_log.info('%s - "%s %s HTTP/%s" %d', "10.0.0.9:5000", "GET", path, "1.1", 200)
            for path in (
                "/api/v1/regulator/complaints/7KQ2MX9PTA/transition",
                "/office/010011/queue/7KQ2MX9PTA/served",
            ):
                access_log.info('"POST %s HTTP/1.1" 200', path)
            access_log.info('"GET /api/v1/offices/010011/slots?service=101 HTTP/1.1" 200')
            access_log.info('"GET /api/v1/complaints HTTP/1.1" 200')
            access_log.info('"GET /book?office_code=010011&service_code=101 HTTP/1.1" 200')
            access_log.info('"GET /complaints/new HTTP/1.1" 200')
            # Twilio's client logs each request at INFO (asked which messages went to a number)
            logging.getLogger("twilio.http_client").info("GET Request: /Messages.json?To=+989125550002")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]
    mine = next(line for line in lines if line["logger"] == "app.test")
    access, *codes, office, complaints, book_form, new_complaint = [
        line["message"] for line in lines if line["logger"] == "uvicorn.access"
    ]
    assert "0499370899" not in mine["message"] and "9121234567" not in mine["message"]
    assert "9125550001" not in access
    assert [line for line in codes if "X9PTA" in line.upper() or "**********" not in line] == []
    assert "/offices/010011/slots?service=101 " in office  # an office's code and a service's stay
    assert "/api/v1/complaints " in complaints  # a route of ten letters is not a code
    assert "office_code=010011&service_code=101 " in book_form and "/complaints/new " in new_complaint
    assert not [line for line in lines if line["logger"].startswith("twilio")]


async def test_api_is_rate_limited_per_address(settings: Settings) -> None:
    async with AsyncTestClient(create_app(settings.with_(api_per_address="5/3600"))) as client:
        statuses = [(await client.get("/api/v1/services")).status_code for _ in range(7)]
        assert statuses == [200] * 5 + [429, 429]
        assert (await client.get("/health/live")).status_code == 200


async def test_pages_are_rate_limited_per_address_with_a_persian_page(settings: Settings) -> None:
    async with AsyncTestClient(create_app(settings.with_(pages_per_address="3/3600"))) as client:
        html = {"Accept": "text/html"}
        statuses = [(await client.get("/", headers=html)).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        refused = await client.get("/lookup", headers=html)
        assert refused.status_code == 429 and "text/html" in refused.headers["content-type"]
        assert 'lang="fa"' in refused.text
        assert (await client.get("/static/nobat.css")).status_code == 200
        # The page's style sheet and script, as the pages name them: a page over the limit
        # had come without its style, to every phone behind a carrier's busy address.
        from app.pages.assets import asset_url

        for name in ("nobat.css", "nobat.js"):
            assert (await client.get(asset_url(name))).status_code == 200, name
        assert (await client.get("/health/ready")).status_code == 200


def test_uvicorns_own_process_logs_json_with_the_shipped_log_config() -> None:
    """With --workers, uvicorn's parent restarts a dead worker and never loads the app: its
    lines ("Child process [...] died") had been plain text among the JSON."""
    from app.observability import LOG_CONFIG

    script = f"""
import logging
from uvicorn.config import Config
Config("app.main:app_from_env", log_config={str(LOG_CONFIG)!r})  # as `uvicorn --log-config` loads it
logging.getLogger("uvicorn.error").warning("Child process [4242] died")
logging.getLogger("uvicorn.access").info('1.2.3.4 - "GET /api/v1/bookings/ABCDE12345 HTTP/1.1" 200')
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert lines[0]["message"] == "Child process [4242] died", done.stderr
    assert lines[0]["logger"] == "uvicorn.error" and lines[0]["at"].endswith("Z")
    assert "ABCDE12345" not in lines[1]["message"]  # the access log masked as in the workers


def test_metrics_add_up_across_worker_processes(tmp_path: Path) -> None:
    """With PROMETHEUS_MULTIPROC_DIR (several uvicorn workers), /metrics sums every process."""
    script = """
import multiprocessing, sys
from app.observability import BOOKINGS, SMS_QUEUE
def work():
    BOOKINGS.labels("web").inc()
    SMS_QUEUE.set(7)
if __name__ == "__main__":
    for _ in range(2):
        p = multiprocessing.get_context("fork").Process(target=work); p.start(); p.join()
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    sys.stdout.write(generate_latest(registry).decode())
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert 'nobat_bookings_total{channel="web"} 2.0' in done.stdout
    assert "nobat_sms_queue_depth 7.0" in done.stdout


async def test_metrics_answer_with_the_record_away_and_a_status_left_empty_reads_0(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scrape is what the on-call engineer reads when the record is in trouble: it had
    failed whole then (503). And a status no office has any more read its last count."""
    from sqlalchemy import update

    from app.offices.models import Office, OfficeStatus

    office = await world.office()
    async with world.container.sessions() as session:
        await session.execute(update(Office).where(Office.code == office).values(status=OfficeStatus.BLOCKED))
        await session.commit()
    assert 'nobat_offices{status="blocked"} 1.0' in (await client.get("/metrics")).text
    async with world.container.sessions() as session:
        await session.execute(update(Office).where(Office.code == office).values(status=OfficeStatus.ACTIVE))
        await session.commit()
    text = (await client.get("/metrics")).text
    assert 'nobat_offices{status="blocked"} 0.0' in text and 'nobat_offices{status="active"} 1.0' in text
    assert 'nobat_queue_depth{queue="codes"} 0.0' in text  # sign-in codes' own queue, counted too

    def away() -> None:
        raise ConnectionRefusedError("the record is away")

    monkeypatch.setattr(client.app.state.container, "sessions", away)
    scraped = await client.get("/metrics")
    assert scraped.status_code == 200
    assert "nobat_sms_failed -1.0" in scraped.text and "nobat_http_requests_total" in scraped.text
    assert 'nobat_offices{status="active"} -1.0' in scraped.text  # not its last count


async def test_the_service_will_not_start_on_a_redis_that_may_evict_its_counters(
    settings: Settings, redis_sync: SyncRedis
) -> None:
    """Under a volatile-* policy Redis drops keys with an expiry (every counter) and keeps the
    rebuild marker: a day counted again without the bookings in flight sells their seats twice."""
    redis_sync.config_set("maxmemory-policy", "volatile-lru")
    try:
        with pytest.raises(Exception) as refused:  # the test client wraps it in a group
            async with AsyncTestClient(create_app(settings)):
                pass
        errors = refused.value.exceptions if isinstance(refused.value, ExceptionGroup) else (refused.value,)
        assert any(isinstance(e, RuntimeError) and "noeviction" in str(e) for e in errors), errors
    finally:
        redis_sync.config_set("maxmemory-policy", "noeviction")
    async with AsyncTestClient(create_app(settings)) as client:
        assert (await client.get("/health/ready")).status_code == 200


async def test_the_service_will_not_start_on_a_shared_record_without_redis_url(settings: Settings) -> None:
    """Each process had started a Redis of its own, counted every seat into it from the
    shared record, and sold each seat once per process, answering ready. Refused before it
    touches the record (the address below answers nothing)."""
    shared = settings.with_(redis_url=None, database_url="postgresql+asyncpg://nobat@127.0.0.1:9/nobat")
    with pytest.raises(Exception) as refused:  # the test client wraps it in a group
        async with AsyncTestClient(create_app(shared)):
            pass
    errors = refused.value.exceptions if isinstance(refused.value, ExceptionGroup) else (refused.value,)
    assert any(isinstance(e, RuntimeError) and "REDIS_URL must be set" in str(e) for e in errors), errors


async def test_the_web_will_not_start_on_a_shared_record_without_saying_whether_behind_a_proxy(
    settings: Settings,
) -> None:
    """Left at false behind the balancer, every client had the balancer's address: the whole
    country shared one address's sign-in codes and staff sign-ins. Refused before it touches
    the record (the address below answers nothing); said either way, it goes on."""
    shared = settings.with_(trust_forwarded_for=None, database_url="postgresql+asyncpg://nobat@127.0.0.1:9/nobat")
    with pytest.raises(Exception) as refused:  # the test client wraps it in a group
        async with AsyncTestClient(create_app(shared)):
            pass
    errors = refused.value.exceptions if isinstance(refused.value, ExceptionGroup) else (refused.value,)
    assert any(isinstance(e, RuntimeError) and "NOBAT_TRUST_FORWARDED_FOR must be set" in str(e) for e in errors)
    if settings.database_url.startswith("sqlite"):  # the embedded record keeps the default
        async with AsyncTestClient(create_app(settings.with_(trust_forwarded_for=None))) as client:
            assert (await client.get("/health/ready")).status_code == 200


async def test_a_failed_statements_error_names_no_citizens_values(world: World) -> None:
    """Errors carried their statement's values into every log (a 500, a job's failure, RQ's
    kept traceback): national IDs and mobiles in forms the masking cannot all know (a card's
    grouping, a phone's invisible marks)."""
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    mobile = "\u206609121234567"  # as copied from a phone, beyond the masking's reach
    insert = text("INSERT INTO citizen_phones (mobile, national_id, updated_at) VALUES (:m, :n, :at)")
    async with world.container.sessions() as session:
        await session.execute(insert, {"m": mobile[1:], "n": "0499370899", "at": world.container.clock.now()})
        with pytest.raises(IntegrityError) as failed:  # the same mobile again
            await session.execute(insert, {"m": mobile[1:], "n": "0499370899", "at": world.container.clock.now()})
    assert "1234567" not in str(failed.value) and "0499370899" not in str(failed.value), str(failed.value)


async def test_a_booking_refused_for_redis_away_is_counted_as_unavailable(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rejections counted only the service's own refusals: a booking answered 503 for a
    Redis that did not answer (a timeout, a failover) left the counter flat, and the
    deployment's "a surge of service_unavailable is us" saw nothing."""
    from redis.exceptions import TimeoutError as RedisTimeout

    from app.observability import REJECTIONS
    from tests.conftest import fails_once

    office = await world.office()
    before = REJECTIONS.labels("service_unavailable")._value.get()
    fails_once(monkeypatch, client.app.state.container.capacity, "hold_and_reserve", RedisTimeout("timed out"))
    refused = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), world.tomorrow()), headers=world.token()
    )
    assert refused.status_code == 503, refused.text
    assert REJECTIONS.labels("service_unavailable")._value.get() == before + 1


async def test_an_instance_pausing_bookings_for_a_recount_still_serves(client: Client, world: World) -> None:
    """During a recount every instance answers /health/ready 503 at once, for minutes with a
    country's bookings: a balancer that took them out had none, and pages, the consoles and
    Twilio's webhooks got its error. /health/serving, the balancer's check, says whether the
    instance can serve at all: the database and Redis."""
    from tests.conftest import watch_held

    office = await world.office()
    container = client.app.state.container
    async with watch_held():
        container.capacity.ready = False  # as the watch pauses bookings for a recount
        try:
            ready = await client.get("/health/ready")
            serving = await client.get("/health/serving")
            page = await client.get(f"/api/v1/offices/{office}")
        finally:
            container.capacity.ready = True
    assert ready.status_code == 503 and ready.json()["capacity"] == "rebuilding"
    assert serving.status_code == 200 and serving.json() == {"status": "ready", "database": "ok", "redis": "ok"}
    assert page.status_code == 200
    from redis.asyncio import Redis as AsyncRedis

    redis = container.redis
    container.redis = AsyncRedis(host="127.0.0.1", port=9)  # nothing listens there
    try:
        away = await client.get("/health/serving")
    finally:
        await container.redis.aclose()
        container.redis = redis
    assert away.status_code == 503 and away.json()["redis"] == "unavailable" and away.headers["Retry-After"]


async def test_readiness_answers_in_time_when_the_database_keeps_it_waiting(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every connection of the pool taken (a rush, a slow primary): readiness had waited the
    pool's 30 s, past any balancer's check."""
    import asyncio
    import contextlib
    import time as clock
    from collections.abc import AsyncIterator

    container = client.app.state.container

    @contextlib.asynccontextmanager
    async def waits_for_ever() -> AsyncIterator[None]:
        await asyncio.sleep(3600)
        yield

    class Stuck:
        connect = staticmethod(waits_for_ever)

    engine = container.engine
    container.engine = Stuck()
    try:
        started = clock.monotonic()
        ready = await asyncio.wait_for(client.get("/health/ready"), 10)
    finally:
        container.engine = engine
    assert clock.monotonic() - started < 5
    assert ready.status_code == 503 and ready.json()["database"] == "unavailable"


async def test_the_scrape_counts_the_unsent_and_failed_sms_up_to_a_bound(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every scrape of every instance had counted the evening's backlog of reminders whole
    (hundreds of thousands of rows, every 15 s). Counted up to a bound: past it, "that many
    or more", which is what the alert needs."""
    from app import observability
    from app.sms.models import SmsMessage, SmsStatus

    async with world.container.sessions() as session:
        for n, status in enumerate([SmsStatus.FAILED] * 3 + [SmsStatus.QUEUED] * 4):
            session.add(SmsMessage(id=f"bound-{n}", to="09120000000", body="-", kind="reminder", status=status))
        await session.commit()
    text = (await client.get("/metrics")).text
    assert "nobat_sms_failed 3.0" in text and "nobat_sms_unsent 4.0" in text
    monkeypatch.setattr(observability, "SMS_COUNTED", 2)
    text = (await client.get("/metrics")).text
    assert "nobat_sms_failed 2.0" in text and "nobat_sms_unsent 2.0" in text
