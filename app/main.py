"""The app factory: one plain function that lists what it wires."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Request
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import MethodNotAllowedException, NotFoundException
from litestar.openapi import OpenAPIConfig
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.routes import CitizenAuthController
from app.booking.routes import BookingsController, WaitlistController
from app.capacity.watch import RedisWatch
from app.complaints.routes import ComplaintsController, RegulatorComplaintsController
from app.console.routes import ConsoleController
from app.container import Container, build_container, shut_down
from app.db import create_schema, session_scope
from app.enforcement.routes import GuildController, OfficeEnforcementController, RegulatorActionsController
from app.health import HealthController, MetricsController
from app.load.routes import LoadController
from app.observability import configure_logging, observe_requests
from app.offices.routes import OfficesController
from app.pages import page_handlers, template_config
from app.pages.routes import method_not_allowed, not_found
from app.redis import EmbeddedRedis
from app.regulator.routes import RegulatorCapacityController
from app.settings import Settings, load_settings
from app.sms.routes import TwilioWebhooks
from app.staff.routes import StaffAuthController, provide_staff
from app.web import Deps, count_request, problem_details_plugin

log = logging.getLogger(__name__)

GC_THRESHOLDS = (50_000, 20, 10)
"""The collector's thresholds once serving (CPython's default: 700, 10, 10). Under load a
young collection every 700 allocations caught the objects of every request in flight and
moved them to the old generations, whose full passes then came twice a second and stopped a
worker for 70 ms each; at 50,000 most of a request's objects are gone before it runs."""


def _container(state: State) -> Container:
    return state.container


async def _session(container: Deps) -> AsyncIterator[AsyncSession]:
    # Taking the container (not the app state) puts the two in separate steps of Litestar's
    # dependency resolution: two dependencies in one step are resolved in a task group of
    # their own, which had cost a slots read or a booking about a tenth of its time.
    async for session in session_scope(container.sessions):
        yield session


# Not limited: probes and the scraper (our own infrastructure), the cacheable assets, and
# Twilio's webhooks (signature-checked, and one Twilio address carries many citizens).
_UNLIMITED = ("/health", "/metrics", "/static/", "/assets/", "/sms/twilio/")


async def _limit_per_address(request: Request[Any, Any, Any]) -> None:
    """Every public endpoint, API and page, is rate-limited per client address, across all
    instances (counted in memory, added up in Redis ten times a second: app.ratelimit)."""
    path = request.scope["path"]
    if path.startswith(_UNLIMITED):
        return
    count_request(request, "api" if path.startswith("/api/") else "pages")


async def _fill_waitlists(container: Container) -> None:
    """Every free seat to the head of its line, as after a cancel (app.capacity.watch)."""
    async with container.sessions() as session:
        await container.bookings.fill_waitlists(session=session)


def create_app(settings: Settings | None = None) -> Litestar:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # Read as the app starts, not as it is built: the tests build one app (a tenth of a
        # second of Litestar's set-up) and start it again for each test, with its settings.
        settings: Settings = app.state.settings
        embedded = None
        redis_url = settings.redis_url
        if not redis_url:
            if not settings.database_url.startswith("sqlite"):
                # Each process had started a redis-server of its own, counted every seat into
                # it from the shared record, and sold each seat once per process, while
                # answering ready. The embedded Redis is the embedded SQLite's only.
                raise RuntimeError("REDIS_URL must be set when DATABASE_URL is not the embedded SQLite")
            embedded = EmbeddedRedis(settings.var_dir / "redis").start()
            redis_url = embedded.url
            log.info("embedded redis-server on %s", redis_url)
        if settings.trust_forwarded_for is None and not settings.database_url.startswith("sqlite"):
            # Behind the balancer with the default, every client had the balancer's address:
            # the whole country shared one address's sign-in codes and staff sign-ins, and one
            # script used them up. Only the web reads it: workers and commands start without.
            raise RuntimeError(
                "NOBAT_TRUST_FORWARDED_FOR must be set when DATABASE_URL is not the embedded SQLite (true behind "
                "our own balancer, which appends the client's address; false when clients connect directly)"
            )
        container = build_container(settings, redis_url)
        app.state.container = container
        try:
            if settings.database_url.startswith("sqlite"):
                settings.var_dir.mkdir(parents=True, exist_ok=True)
            # Migrations to head (on PostgreSQL under an advisory lock, so that of several
            # instances starting together one migrates and the others wait).
            await create_schema(container.engine)
            # Redis empty (first start, or it lost its data): count every seat again from the
            # record before taking a single booking; then keep watching for the next time.
            watch = RedisWatch(
                capacity=container.capacity,
                sessions=container.sessions,
                clock=container.clock,
                settle=settings.rebuild_settle_seconds,
                on_resume=lambda: _fill_waitlists(container),
            )
            await watch.check()
            await container.offices.load()
            # What start-up built (modules, the office directory, the mappers) lives as long as
            # the process: keep it out of the collector's full passes, which had stopped a worker
            # for 150 ms at a time under load.
            gc.collect()
            gc.freeze()
            gc.set_threshold(*GC_THRESHOLDS)
            # The citizens' tokens signed out (app.auth.signed_out): all known before the first
            # request when Redis answers, else from the loop's first look that succeeds.
            with contextlib.suppress(RedisError):
                await container.auth.signed_out.look()
            watcher = asyncio.create_task(watch.run())
            listener = asyncio.create_task(container.auth.signed_out.run())
            try:
                yield
            finally:
                watcher.cancel()
                listener.cancel()
                # Ended before the container closes: a fill it was making tells its changes.
                await shut_down("stopping the watch", asyncio.gather(watcher, listener, return_exceptions=True))
        finally:
            await container.close()
            if embedded:
                embedded.stop()

    return Litestar(
        route_handlers=[
            HealthController,
            CitizenAuthController,
            LoadController,
            OfficesController,
            BookingsController,
            WaitlistController,
            StaffAuthController,
            ConsoleController,
            RegulatorCapacityController,
            TwilioWebhooks,
            ComplaintsController,
            RegulatorComplaintsController,
            RegulatorActionsController,
            GuildController,
            OfficeEnforcementController,
            MetricsController,
            *page_handlers(),
        ],
        dependencies={
            "container": Provide(_container, sync_to_thread=False),
            "session": Provide(_session),
            "staff": Provide(provide_staff),
        },
        lifespan=[lifespan],
        state=State({"settings": settings or load_settings()}),
        plugins=[problem_details_plugin()],
        middleware=[observe_requests],
        before_request=_limit_per_address,
        template_config=template_config(),
        # A browser asking for a page that does not exist gets a Persian page; API clients
        # keep getting problem details.
        exception_handlers={NotFoundException: not_found, MethodNotAllowedException: method_not_allowed},
        openapi_config=OpenAPIConfig(title="nobat", version="1.0.0", path="/schema"),
        request_max_body_size=64 * 1024,
        # Logging is configured once per process (configure_logging); Litestar's own setup
        # would replace it with plain, unmasked lines.
        logging_config=None,
        debug=False,
    )


def app_from_env() -> Any:
    """Entry point for ASGI servers (``uvicorn --factory app.main:app_from_env``)."""
    configure_logging()
    return create_app()
