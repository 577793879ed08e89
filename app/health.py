from __future__ import annotations

import asyncio
import os

from litestar import Controller, Response, get
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from sqlalchemy import text

from app.container import Container
from app.observability import forget_dead_workers, refresh
from app.web import Deps

CHECK_SECONDS = 2.0
"""How long readiness waits for the database, and for Redis, before it says unavailable."""


class HealthController(Controller):
    path = "/health"
    tags = ["health"]
    include_in_schema = False

    @get("/live")
    async def live(self) -> dict[str, str]:
        return {"status": "ok"}

    @get("/ready")
    async def ready(self, container: Deps) -> Response[dict[str, str]]:
        """Bookable: the database and Redis answer, and the counters are built ("capacity":
        "rebuilding" while they are counted again, and bookings wait with a 503; "redis
        ResponseError" and the like when Redis refuses the watch, a write above all)."""
        capacity = container.capacity
        checks = {
            **await _servers(container),
            "capacity": "ok" if capacity.ready else capacity.paused_by or "rebuilding",
        }
        return _answer(checks)

    @get("/serving")
    async def serving(self, container: Deps) -> Response[dict[str, str]]:
        """Serving: the database and Redis answer; for the balancer's check. During a recount
        every instance is unready at once (minutes, with a country's bookings), and a balancer
        that took them out had none left: pages, the staff's consoles and Twilio's webhooks
        got its error, while only bookings wait (each answers 503 itself)."""
        return _answer(await _servers(container))


async def _servers(container: Container) -> dict[str, str]:
    checks = {"database": "ok", "redis": "ok"}
    # Each bounded: a pool with every connection taken waited its 30 s, past any balancer's
    # check, and the answer came when nobody was listening.
    try:
        async with asyncio.timeout(CHECK_SECONDS), container.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception:
        checks["database"] = "unavailable"
    try:
        async with asyncio.timeout(CHECK_SECONDS):
            await container.redis.ping()
    except Exception:
        checks["redis"] = "unavailable"
    return checks


def _answer(checks: dict[str, str]) -> Response[dict[str, str]]:
    ready = all(v == "ok" for v in checks.values())
    return Response(
        {"status": "ready" if ready else "unavailable", **checks},
        status_code=200 if ready else 503,
        headers={} if ready else {"Retry-After": "5"},
    )


class MetricsController(Controller):
    """Prometheus scrapes this (keep it off the public internet at the load balancer)."""

    path = "/metrics"
    include_in_schema = False

    @get("/", media_type=CONTENT_TYPE_LATEST)
    async def metrics(self, container: Deps) -> Response[bytes]:
        await refresh(container)
        if directory := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # Several worker processes: add up what each wrote, not just this one's counters.
            forget_dead_workers(directory)
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
