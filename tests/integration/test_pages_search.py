"""The citizen's office search page, server-rendered, without a browser."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.capacity.plan import DayRule
from app.clock import Clock
from app.locale import to_persian_digits
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


async def test_a_booking_form_for_a_day_outside_the_horizon_is_a_page_saying_so(client: Client, world: World) -> None:
    """9999-12-31 had no Jalali date and was a 500 in JSON, in English: the horizon's 422, as
    a page. (A past day goes back to the office's page: the test of a form sent after its day.)"""
    office = await world.office()
    token = world.token("09125556001")["Authorization"].removeprefix("Bearer ")
    client.cookies.set(CITIZEN_COOKIE, token)
    far = (world.container.clock.today() + dt.timedelta(days=400)).isoformat()
    for day in ("9999-12-31", far):
        query = {"office": office, "service": "101", "date": day}
        page = await client.get("/book", params=query, headers={"Accept": "text/html"})
        assert page.status_code == 422 and "<html" in page.text and "نوبت فقط از" in page.text, page.text


async def test_when_no_day_ahead_has_room_the_search_shows_the_day_asked_for(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing free today or in the days looked at after it: the page shows today, as it is,
    not the last day looked at as "the first day that has room"."""
    await world.office(rules=[DayRule(opens="08:00", closes="08:30", slot_minutes=30, seats=0)])
    await world.rebuild()
    page = await client.get("/offices", params={"service": "101", "city": "Tehran"}, headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert "امروز در این نزدیکی نوبت خالی نمانده" not in page.text
    assert "تعطیل" in page.text  # a slot of no seats: today, as it is


async def test_the_sign_in_page_says_how_long_a_code_lasts(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    container = client.app.state.container
    monkeypatch.setattr(container, "settings", container.settings.with_(otp_ttl_seconds=300))
    page = await client.get("/signin/code", params={"mobile": "09125556002"}, headers={"Accept": "text/html"})
    assert f"کد تا {to_persian_digits('5')} دقیقه معتبر است" in page.text


async def test_a_pages_unexpected_failure_is_a_persian_page(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(**_: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(client.app.state.container.load, "nearby", broken)
    page = await client.get("/offices", params={"service": "101", "city": "Tehran"}, headers={"Accept": "text/html"})
    assert page.status_code == 500 and "<html" in page.text and "خطایی در سامانه رخ داد" in page.text


async def test_a_sign_in_refused_for_too_many_codes_says_when_to_come_back(client: Client) -> None:
    page = await client.get("/signin", headers={"Accept": "text/html"})
    csrf = re.search(r'name="_csrf" value="([0-9a-f]+)"', page.text)
    assert csrf
    form = {"_csrf": csrf.group(1), "mobile": "09125556003"}
    for _ in range(3):  # NOBAT_OTP_PER_MOBILE: 3 in ten minutes
        sent = await client.post("/signin", data=form, follow_redirects=False)
        assert sent.status_code == 303, sent.text
    refused = await client.post("/signin", data=form, follow_redirects=False)
    assert refused.status_code == 429 and "<html" in refused.text
    assert int(refused.headers["Retry-After"]) > 0


async def test_a_second_tap_on_join_the_waitlist_shows_the_line_joined(client: Client, world: World) -> None:
    """The first tap joined; the second was refused "already booked that day" and shown as
    an error on the form, though the citizen was in line."""
    office = await world.office(rules=[DayRule(opens="10:00", closes="10:30", slot_minutes=30, seats=1)])
    day = world.tomorrow()
    taken = await client.post(
        "/api/v1/bookings", json=booking_body(office, world.national_id(), day), headers=world.token()
    )
    assert taken.status_code == 201, taken.text
    token = world.token("09125556002")["Authorization"].removeprefix("Bearer ")
    client.cookies.set(CITIZEN_COOKIE, token)
    query = {"office": office, "service": "101", "date": day.isoformat(), "waitlist": "1"}
    form_page = await client.get("/book", params=query, headers={"Accept": "text/html"})
    csrf = re.search(r'name="_csrf" value="([0-9a-f]+)"', form_page.text)
    assert csrf, form_page.text
    form = {"_csrf": csrf[1], "office": office, "service": "101", "date": day.isoformat(), "waitlist": "1"}
    form["national_id"] = world.national_id()
    answers = [await client.post("/book", data=form, follow_redirects=False) for _ in range(2)]
    assert [a.status_code for a in answers] == [303, 303], answers[1].text
    assert answers[0].headers["location"] == answers[1].headers["location"]


async def test_the_search_page_reads_a_position_as_the_api_does(client: Client, world: World) -> None:
    """Persian digits with the Persian decimal point «٫» (which the API read, and the page
    refused as "not a position"), and a code pasted with direction marks around it."""
    office = await world.office(lat=35.7, lon=51.41)
    await world.rebuild()
    for lat, lon in (("35.7", "51.4"), ("۳۵٫۷", "۵۱٫۴"), ("٣٥.٧", "٥١.٤")):
        page = await client.get(
            "/offices", params={"service": "101", "lat": lat, "lon": lon}, headers={"Accept": "text/html"}
        )
        assert page.status_code == 200 and f"/offices/{office}" in page.text, (lat, page.text[:300])
    for wrapped in (f"\u2067{office}\u2069", f"\u200f{office}\u200e", f" {to_persian_digits(office)}\u200c"):
        answer = await client.get(f"/api/v1/offices/{wrapped}")
        assert answer.status_code == 200 and answer.json()["code"] == office, (wrapped, answer.text)
    refused = await client.get(
        "/offices", params={"service": "101", "lat": "35.7.1", "lon": "51.4"}, headers={"Accept": "text/html"}
    )
    assert "موقعیت فرستاده‌شده معتبر نیست" in refused.text


async def test_a_city_typed_wins_over_the_position_left_in_the_form(client: Client, world: World) -> None:
    """Without the script, the hidden position of a search before stayed in the form: a city
    typed was ignored, and after a position refused («not in Iran»), every city was too."""
    office = await world.office(lat=35.7, lon=51.41)
    await world.rebuild()
    for lat, lon in (("10.0", "10.0"), ("35.7.1", "51.4")):
        page = await client.get(
            "/offices",
            params={"service": "101", "city": "Tehran", "lat": lat, "lon": lon},
            headers={"Accept": "text/html"},
        )
        assert page.status_code == 200 and f"/offices/{office}" in page.text, (lat, page.text[:500])
        assert 'name="lat" value=""' in page.text  # and the next search from this page is the city's


async def test_the_office_page_says_when_it_shows_a_later_day_and_what_waiting_is_unknown(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    office = await world.office()  # open 08:00-20:00 every day
    await world.rebuild()
    tz = world.container.clock.tz
    late = dt.datetime.combine(world.container.clock.today(), dt.time(22, 0), tzinfo=tz)
    monkeypatch.setattr(Clock, "now", lambda self: late)
    page = await client.get(f"/offices/{office}", params={"service": "101"}, headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert "امروز در این دفتر نوبت خالی نیست" in page.text
    # No clerk has reported the room: not "0 people".
    assert "گزارش نشده" in page.text and "۰ نفر" not in page.text
    await world.container.load.report_waiting(office_code=office, count=7)
    await world.container.capacity.reads.told()
    reported = await client.get(
        f"/offices/{office}",
        params={"service": "101", "date": (late.date() + dt.timedelta(days=1)).isoformat()},
        headers={"Accept": "text/html"},
    )
    assert "۷ نفر" in reported.text and "گزارش نشده" not in reported.text
    assert "امروز در این دفتر نوبت خالی نیست" not in reported.text  # a day the citizen chose


async def test_a_booking_form_sent_after_its_day_has_passed_goes_back_to_the_office(
    client: Client, world: World
) -> None:
    """Left open overnight and sent the next morning: a bare error page had lost the office,
    the service and the national ID typed."""
    office = await world.office()
    token = world.token("09125556003")["Authorization"].removeprefix("Bearer ")
    client.cookies.set(CITIZEN_COOKIE, token)
    query = {"office": office, "service": "101", "date": world.tomorrow().isoformat()}
    form_page = await client.get("/book", params=query, headers={"Accept": "text/html"})
    csrf = re.search(r'name="_csrf" value="([0-9a-f]+)"', form_page.text)
    assert csrf, form_page.text
    yesterday = (world.container.clock.today() - dt.timedelta(days=1)).isoformat()
    form = {**query, "_csrf": csrf[1], "date": yesterday, "national_id": world.national_id()}
    answer = await client.post("/book", data=form, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == f"/offices/{office}?service=101&notice=day_passed"
    page = await client.get(answer.headers["location"], headers={"Accept": "text/html"})
    assert "روز آن فرم گذشته است" in page.text
    # The form itself asked for a day just passed (picked at 23:58, a sign-in that ended after
    # midnight): the same, not an "outside the horizon" page.
    opened = await client.get("/book", params={**query, "date": yesterday}, follow_redirects=False)
    assert opened.status_code == 303 and opened.headers["location"] == answer.headers["location"], opened.text
