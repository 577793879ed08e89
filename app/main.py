"""The app factory: one plain function that lists what it wires."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.routes import CitizenAuthController
from app.booking.routes import BookingsController, WaitlistController
from app.complaints.routes import ComplaintsController, RegulatorComplaintsController
from app.console.routes import ConsoleController
from app.container import Container, build_container
from app.db import create_schema, session_scope
from app.enforcement.routes import GuildController, OfficeEnforcementController, RegulatorActionsController
from app.health import HealthController
from app.pages import page_handlers, template_config
from app.load.routes import LoadController
from app.offices.routes import OfficesController
from app.redis import EmbeddedRedis
from app.regulator.routes import RegulatorCapacityController
from app.settings import Settings, load_settings
from app.sms.routes import TwilioWebhooks
from app.staff.routes import StaffAuthController, provide_staff
from app.web import problem_details_plugin

log = logging.getLogger(__name__)


def _container(state: State) -> Container:
    return state.container


async def _session(state: State) -> AsyncIterator[AsyncSession]:
    async for session in session_scope(state.container.sessions):
        yield session


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        embedded = None
        redis_url = settings.redis_url
        if not redis_url:
            embedded = EmbeddedRedis(settings.var_dir / "redis").start()
            redis_url = embedded.url
            log.info("embedded redis-server on %s", redis_url)
        container = build_container(settings, redis_url)
        app.state.container = container
        try:
            if settings.database_url.startswith("sqlite"):
                settings.var_dir.mkdir(parents=True, exist_ok=True)
            # Migrations to head (on PostgreSQL under an advisory lock, so that of several
            # instances starting together one migrates and the others wait).
            await create_schema(container.engine)
            if not await container.capacity.is_built():
                # Redis is empty (first start, or it lost its data): count every seat again
                # from the record before taking a single booking.
                async with container.sessions() as session:
                    await container.capacity.rebuild(session=session, today=container.clock.today())
            yield
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
            *page_handlers(),
        ],
        dependencies={
            "container": Provide(_container, sync_to_thread=False),
            "session": Provide(_session),
            "staff": Provide(provide_staff),
        },
        lifespan=[lifespan],
        plugins=[problem_details_plugin()],
        template_config=template_config(),
        openapi_config=OpenAPIConfig(title="nobat", version="1.0.0", path="/schema"),
        request_max_body_size=64 * 1024,
        debug=False,
    )


def app_from_env() -> Any:
    """Entry point for ASGI servers (``uvicorn --factory app.main:app_from_env``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return create_app()
