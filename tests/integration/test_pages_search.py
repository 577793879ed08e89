"""The citizen's office search page, server-rendered, without a browser."""

from __future__ import annotations

import datetime as dt

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.clock import Clock
from tests.conftest import World

Client = AsyncTestClient[Litestar]


async def test_after_hours_the_search_shows_the_first_day_with_seats(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    office = await world.office()  # open 08:00-20:00 every day
    await world.rebuild()
    tz = world.container.clock.tz
    late = dt.datetime.combine(world.container.clock.today(), dt.time(22, 0), tzinfo=tz)
    monkeypatch.setattr(Clock, "now", lambda self: late)
    page = await client.get("/offices", params={"service": "101", "city": "Tehran"}, headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert "امروز در این نزدیکی نوبت خالی نمانده" in page.text
    tomorrow = (late.date() + dt.timedelta(days=1)).isoformat()
    assert f"/offices/{office}?service=101&amp;date={tomorrow}" in page.text
    assert "بدون نوبت خالی" not in page.text

    chosen = await client.get(
        "/offices",
        params={"service": "101", "city": "Tehran", "date": late.date().isoformat()},
        headers={"Accept": "text/html"},
    )
    # A day the citizen chose is kept, and an office with nothing left says so, not "quiet".
    assert "امروز در این نزدیکی" not in chosen.text and "بدون نوبت خالی" in chosen.text
