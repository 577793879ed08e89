"""Metrics, request ids, log masking and the per-address API limit."""

from __future__ import annotations

import logging

from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.main import create_app
from app.observability import JsonFormatter, mask
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


async def test_api_is_rate_limited_per_address(settings: Settings) -> None:
    async with AsyncTestClient(create_app(settings.with_(api_per_address="5/60"))) as client:
        statuses = [(await client.get("/api/v1/services")).status_code for _ in range(7)]
        assert statuses == [200] * 5 + [429, 429]
        assert (await client.get("/health/live")).status_code == 200
