"""The citizen's office search page, server-rendered, without a browser."""

from __future__ import annotations

import datetime as dt

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.capacity.plan import DayRule
from app.clock import Clock
from app.pages.render import CITIZEN_COOKIE
from tests.conftest import World, booking_body

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

    # Today, chosen in the form, is looked past the same way.
    today = await client.get(
        "/offices",
        params={"service": "101", "city": "Tehran", "date": late.date().isoformat()},
        headers={"Accept": "text/html"},
    )
    assert "امروز در این نزدیکی نوبت خالی نمانده" in today.text


async def test_a_later_day_chosen_is_kept_and_a_full_office_says_so(client: Client, world: World) -> None:
    office = await world.office(rules=[DayRule(opens="08:00", closes="08:30", slot_minutes=30, seats=1)])
    await world.rebuild()
    day = world.tomorrow()
    booked = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day, None), headers=world.token()
    )
    assert booked.status_code == 201
    page = await client.get(
        "/offices",
        params={"service": "101", "city": "Tehran", "date": day.isoformat()},
        headers={"Accept": "text/html"},
    )
    # The day the citizen picked is kept; a full office shows "no free slot", not "quiet".
    assert "نوبت خالی نمانده" not in page.text and "بدون نوبت خالی" in page.text
    assert "badge-low" not in page.text


async def test_the_booking_form_reads_a_slot_as_the_api_does(client: Client, world: World) -> None:
    """A slot in the link written "9:30" or in Persian digits is the 09:30 slot; one that is
    no time at all is a clear 422. Each had been a 500 (the template read it as ISO time)."""
    office = await world.office()
    token = world.token("09125556000")["Authorization"].removeprefix("Bearer ")
    client.cookies.set(CITIZEN_COOKIE, token)
    query = {"office": office, "service": "101", "date": world.tomorrow().isoformat()}
    for written in ("9:30", "۰۹:۳۰"):
        page = await client.get("/book", params={**query, "slot": written}, headers={"Accept": "text/html"})
        assert page.status_code == 200, page.text
        assert "۹:۳۰" in page.text and 'name="slot" value="09:30"' in page.text
    wrong = await client.get("/book", params={**query, "slot": "x"}, headers={"Accept": "text/html"})
    assert wrong.status_code == 422 and "۹:۳۰" in wrong.text


async def test_a_city_no_one_types_is_a_field_error_on_the_page(client: Client, world: World) -> None:
    page = await client.get("/offices", params={"service": "101", "city": "تهران\x00"}, headers={"Accept": "text/html"})
    assert page.status_code == 422 and "<html" in page.text and "نویسهٔ غیرمجاز" in page.text
