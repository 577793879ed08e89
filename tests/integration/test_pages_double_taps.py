"""The citizen's forms sent twice (a double tap, a resend after a slow answer), sent after
the sign-in ended, and the pages a shared computer's browser must not keep."""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient, transport
from redis import Redis as SyncRedis
from sqlalchemy import func, select

from app.booking.models import Booking, BookingStatus
from app.booking.tracking import new_tracking_code
from app.complaints.models import Complaint
from app.pages import citizen
from app.pages.render import CITIZEN_COOKIE
from tests.conftest import World

Client = AsyncTestClient[Litestar]
HTML = {"Accept": "text/html"}


def sign_in(client: Client, world: World, mobile: str) -> None:
    client.cookies.set(CITIZEN_COOKIE, world.container.auth.issue_token(mobile))


def hidden(page: httpx.Response, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', page.text)
    assert found, page.text
    return found[1]


def post_aside(client: Client, path: str, data: dict[str, str]) -> httpx.Response:
    """A POST from a thread of its own, beside the test client's (which sends its requests
    one after another): a second tap while the first is still on its way."""
    request = client.build_request("POST", path, data=data, headers=HTML)
    response = transport.TestClientTransport(client).handle_request(request)
    response.read()
    return response


async def book_form(client: Client, world: World, office: str) -> dict[str, str]:
    """The booking form for tomorrow at 10:00, filled in."""
    day = world.tomorrow().isoformat()
    query = {"office": office, "service": "101", "date": day, "slot": "10:00"}
    page = await client.get("/book", params=query, headers=HTML)
    assert page.status_code == 200, page.text
    return {
        "_csrf": hidden(page, "_csrf"),
        "idem": hidden(page, "idem"),
        **query,
        "national_id": world.national_id(),
    }


def hold_the_first_commit(client: Client, monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """The app's bookings stop before their commit until ``go_on`` is set; ``committing`` is
    set once one has stopped there."""
    writer = client.app.state.container.bookings.writer
    write = writer.write
    committing, go_on = threading.Event(), threading.Event()

    async def held(*args: Any, **kwargs: Any) -> Any:
        committing.set()
        assert await asyncio.to_thread(go_on.wait, 20), "the test never let the commit go on"
        return await write(*args, **kwargs)

    monkeypatch.setattr(writer, "write", held)
    return committing, go_on


async def test_a_second_tap_on_book_lands_on_the_booking_the_first_is_committing(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second tap found the first one's seat but not yet its row, and the page showed
    «in progress» with a new form key: the next tap was then "already booked that day", and
    the citizen never saw the tracking code."""
    office = await world.office()
    sign_in(client, world, "09125557001")
    form = await book_form(client, world, office)
    committing, go_on = hold_the_first_commit(client, monkeypatch)
    bookings = client.app.state.container.bookings
    by_key = bookings.by_idempotency_key

    async def then_commit(*args: Any) -> Any:
        found = await by_key(*args)
        go_on.set()  # the second tap looks for the first's booking: the first commits while it waits
        return found

    monkeypatch.setattr(bookings, "by_idempotency_key", then_commit)
    first = asyncio.ensure_future(asyncio.to_thread(post_aside, client, "/book", form))
    assert await asyncio.to_thread(committing.wait, 20)
    second = await asyncio.to_thread(post_aside, client, "/book", form)
    assert second.status_code == 303, second.text
    assert (await first).headers["location"] == second.headers["location"]
    assert re.fullmatch(r"/bookings/[^?]+\?new=1", second.headers["location"])


async def test_a_second_tap_on_book_that_outwaits_the_first_keeps_the_form_key(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first tap is still not committed when the second stops waiting for it: the form
    comes back with the same key, and the next tap is answered with the booking."""
    monkeypatch.setattr(citizen, "FIRST_TAP_WAIT_SECONDS", 0.2)
    office = await world.office()
    sign_in(client, world, "09125557002")
    form = await book_form(client, world, office)
    committing, go_on = hold_the_first_commit(client, monkeypatch)
    first = asyncio.ensure_future(asyncio.to_thread(post_aside, client, "/book", form))
    try:
        assert await asyncio.to_thread(committing.wait, 20)
        second = await client.post("/book", data=form, headers=HTML, follow_redirects=False)
    finally:
        go_on.set()
    assert second.status_code == 409 and "هنوز در حال ثبت است" in second.text
    assert hidden(second, "idem") == form["idem"]
    assert f'value="{form["national_id"]}"' in second.text
    booked = await first
    assert booked.status_code == 303, booked.text
    third = await client.post("/book", data=form, follow_redirects=False)
    assert third.status_code == 303 and third.headers["location"] == booked.headers["location"]


async def test_a_form_shown_again_after_booking_points_to_the_booking(client: Client, world: World) -> None:
    """Back after booking shows the form afresh (no copy is kept: see below), with a new key;
    a tap on it is "already booked that day", and now shows the booking too."""
    office = await world.office()
    sign_in(client, world, "09125557003")
    form = await book_form(client, world, office)
    booked = await client.post("/book", data=form, follow_redirects=False)
    assert booked.status_code == 303, booked.text
    code = booked.headers["location"].removeprefix("/bookings/").removesuffix("?new=1")
    again = await book_form(client, world, office)
    refused = await client.post(
        "/book", data={**again, "national_id": form["national_id"]}, headers=HTML, follow_redirects=False
    )
    assert refused.status_code == 409 and f'href="/bookings/{code}"' in refused.text
    # Another number with the same national ID is not shown the booking.
    sign_in(client, world, "09125557004")
    other = await book_form(client, world, office)
    refused = await client.post(
        "/book", data={**other, "national_id": form["national_id"]}, headers=HTML, follow_redirects=False
    )
    assert refused.status_code == 409 and code not in refused.text


async def file_complaint(client: Client, form: dict[str, str]) -> httpx.Response:
    return await client.post("/complaints/new", data=form, headers=HTML, follow_redirects=False)


async def complaint_form(client: Client, office: str) -> dict[str, str]:
    page = await client.get("/complaints/new", params={"office": office}, headers=HTML)
    assert page.status_code == 200, page.text
    return {
        "_csrf": hidden(page, "_csrf"),
        "idem": hidden(page, "idem"),
        "office_code": office,
        "category": "overcharging",
        "description": "بیش از تعرفه پول گرفتند.",
    }


async def complaints_filed(world: World) -> int:
    async with world.container.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(Complaint)) or 0)


async def test_a_complaint_form_sent_twice_files_one_complaint(client: Client, world: World) -> None:
    """A double tap had filed two complaints: two tracking codes, two SMSes, two in the queue."""
    office = await world.office()
    sign_in(client, world, "09125557005")
    form = await complaint_form(client, office)
    first, second = [await file_complaint(client, form) for _ in range(2)]
    assert first.status_code == second.status_code == 303, second.text
    assert second.headers["location"] == first.headers["location"]
    assert await complaints_filed(world) == 1
    # A new form is a new complaint.
    third = await file_complaint(client, await complaint_form(client, office))
    assert third.status_code == 303 and third.headers["location"] != first.headers["location"]
    assert await complaints_filed(world) == 2


async def test_a_complaint_form_refused_then_corrected_is_filed(client: Client, world: World) -> None:
    office = await world.office()
    sign_in(client, world, "09125557006")
    form = await complaint_form(client, office)
    refused = await file_complaint(client, {**form, "description": "بد"})
    assert refused.status_code == 422 and hidden(refused, "idem") == form["idem"]
    filed = await file_complaint(client, form)
    assert filed.status_code == 303, filed.text
    assert await complaints_filed(world) == 1


async def test_a_complaint_form_edited_after_it_was_filed_is_filed_on_the_next_send(
    client: Client, world: World
) -> None:
    """Filed, then back to the form, its text changed and sent again: answered with the first
    complaint, the second would be lost. Said so, with a new key for the next send."""
    office = await world.office()
    sign_in(client, world, "09125557007")
    form = await complaint_form(client, office)
    assert (await file_complaint(client, form)).status_code == 303
    edited = {**form, "description": "بیش از تعرفه پول گرفتند و رسید ندادند."}
    refused = await file_complaint(client, edited)
    assert refused.status_code == 422 and "ثبت شده است" in refused.text, refused.text
    assert hidden(refused, "idem") != form["idem"]
    assert await complaints_filed(world) == 1
    filed = await file_complaint(client, {**edited, "idem": hidden(refused, "idem")})
    assert filed.status_code == 303, filed.text
    assert await complaints_filed(world) == 2


async def test_a_complaint_form_sent_while_the_first_send_files_it_says_so(
    client: Client, world: World, redis_sync: SyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The form's key taken by a send still filing it (its complaint not committed yet): the
    second send waits a moment, then shows the form again as it was, with the same key."""
    monkeypatch.setattr("app.complaints.service.FIRST_SEND_WAIT_SECONDS", 0.2)
    office = await world.office()
    mobile = "09125557007"
    sign_in(client, world, mobile)
    form = await complaint_form(client, office)
    redis_sync.set(f"nobat:complaint-form:{mobile}:{form['idem']}", new_tracking_code(), ex=60)
    waiting = await file_complaint(client, form)
    assert waiting.status_code == 409 and "هنوز در حال ثبت است" in waiting.text
    assert hidden(waiting, "idem") == form["idem"] and form["description"] in waiting.text
    assert await complaints_filed(world) == 0


async def test_a_second_tap_on_cancel_shows_the_booking_cancelled(client: Client, world: World) -> None:
    """The second tap was refused "no longer active; cannot be cancelled", beside the
    «cancelled» badge, as if the cancel had failed."""
    office = await world.office()
    sign_in(client, world, "09125557008")
    booked = await client.post("/book", data=await book_form(client, world, office), follow_redirects=False)
    path = booked.headers["location"].removesuffix("?new=1")
    form = {"_csrf": hidden(await client.get(path, headers=HTML), "_csrf")}
    taps = [await client.post(f"{path}/cancel", data=form, headers=HTML, follow_redirects=False) for _ in range(2)]
    assert [t.status_code for t in taps] == [303, 303], taps[1].text
    assert taps[1].headers["location"] == f"{path}?notice=cancelled"
    # Back, to the confirmation the booking had opened on: it no longer says "booked".
    back = await client.get(booked.headers["location"], headers=HTML)
    assert "نوبت شما ثبت شد" not in back.text and 'data-status="cancelled"' in back.text
    # Someone else's cancelled booking is not theirs to be told about.
    sign_in(client, world, "09125557009")
    form = {"_csrf": hidden(await client.get(path, headers=HTML), "_csrf")}
    other = await client.post(f"{path}/cancel", data=form, headers=HTML, follow_redirects=False)
    assert other.status_code == 403 and "شمارهٔ همراه دیگری" in other.text


async def test_someone_elses_cancel_leaves_the_booking_booked(client: Client, world: World) -> None:
    office = await world.office()
    sign_in(client, world, "09125557011")
    booked = await client.post("/book", data=await book_form(client, world, office), follow_redirects=False)
    path = booked.headers["location"].removesuffix("?new=1")
    sign_in(client, world, "09125557012")
    form = {"_csrf": hidden(await client.get(path, headers=HTML), "_csrf")}
    other = await client.post(f"{path}/cancel", data=form, headers=HTML, follow_redirects=False)
    assert other.status_code == 403 and "شمارهٔ همراه دیگری" in other.text
    async with world.container.sessions() as session:
        status = await session.scalar(select(Booking.status).where(Booking.tracking_code == path.rsplit("/", 1)[1]))
    assert status == BookingStatus.BOOKED


async def test_a_form_sent_after_the_sign_in_ended_asks_for_a_sign_in(client: Client, world: World) -> None:
    """The form's token is bound to the sign-in, so a form sent after the sign-in cookie had
    gone was refused as "expired" (403), and what was typed was lost. It is a sign-in now,
    back to the form with what its address can carry."""
    office = await world.office()
    sign_in(client, world, "09125557010")
    book = await book_form(client, world, office)
    complaint = await complaint_form(client, office)
    client.cookies.delete(CITIZEN_COOKIE)
    booking = await client.post("/book", data=book, headers=HTML, follow_redirects=False)
    assert booking.status_code == 303, booking.text
    assert booking.headers["location"].startswith("/signin?next=%2Fbook%3Foffice%3D")
    filed = await file_complaint(client, complaint)
    assert filed.status_code == 303, filed.text
    back = httpx.URL(filed.headers["location"]).params["next"]
    assert back == f"/complaints/new?office={office}&category=overcharging"
    sign_in(client, world, "09125557010")
    page = await client.get(back, headers=HTML)
    assert f'value="{office}"' in page.text and 'value="overcharging" selected' in page.text
    assert await complaints_filed(world) == 0


async def test_no_personal_page_is_kept_by_the_browser_but_the_assets_are(client: Client, world: World) -> None:
    """On an office's shared computer, Back after a sign-out showed the last citizen's
    booking and complaint from the browser's cache. The pages with nothing of anyone's on
    them, shown to a visitor not signed in, may be kept: Back from an office's page on a slow
    line had fetched the results again and run the search anew."""
    office = await world.office()
    public = ("/", "/offices?service=101&city=Tehran", f"/offices/{office}?service=101")
    for path in public:
        page = await client.get(path, headers=HTML)
        assert page.status_code == 200 and page.headers.get("cache-control") == "private, no-cache", path
    sign_in(client, world, "09125557011")
    booked = await client.post("/book", data=await book_form(client, world, office), follow_redirects=False)
    filed = await file_complaint(client, await complaint_form(client, office))
    for path in (booked.headers["location"], filed.headers["location"], "/complaints/new", "/no-such-page", *public):
        page = await client.get(path, headers=HTML)
        assert page.headers.get("cache-control") == "no-store", (path, page.status_code)
    # The style sheet and the script by their content's digest, kept a year; asked for by
    # another digest (a page from another release's instance), answered, not to be kept.
    home = (await client.get("/", headers=HTML)).text
    for name in ("nobat.css", "nobat.js"):
        address = re.search(rf'"(/assets/[0-9a-f]{{12}}/{name})"', home)
        assert address, home[:600]
        asset = await client.get(address[1])
        assert asset.status_code == 200 and asset.headers["cache-control"] == "public, max-age=31536000, immutable"
        other = await client.get(f"/assets/000000000000/{name}")
        assert other.status_code == 200 and other.content == asset.content
        assert other.headers["cache-control"] == "no-cache"
    assert (await client.get("/assets/000000000000/secrets.txt")).status_code == 404
    font = await client.get("/static/fonts/vazirmatn-arabic-400-normal.woff2")
    assert font.status_code == 200 and "max-age=2592000" in font.headers["cache-control"]


async def test_pages_and_their_assets_are_gzipped_and_the_api_and_fonts_are_not(client: Client, world: World) -> None:
    """About 130 KB a booking's pages and assets as they were, 20 KB gzipped, on a phone's slow
    line. The API's answers are small and its CPU is the rush's; woff2 is compressed already."""
    office = await world.office()
    await world.rebuild()
    gzip = {"Accept-Encoding": "gzip"}
    from app.pages.assets import asset_url

    for path in ("/", f"/offices/{office}?service=101", asset_url("nobat.css"), asset_url("nobat.js")):
        answer = await client.get(path, headers={**HTML, **gzip})
        assert answer.status_code == 200 and answer.headers.get("content-encoding") == "gzip", path
    slots = f"/api/v1/offices/{office}/slots?service=101&date={world.tomorrow().isoformat()}"
    for path in (slots, "/static/fonts/vazirmatn-arabic-400-normal.woff2"):
        answer = await client.get(path, headers=gzip)
        assert answer.status_code == 200 and "content-encoding" not in answer.headers, path
        assert len(answer.content) > 1000  # worth compressing, were it not excluded


async def test_a_complaint_form_whose_filing_failed_may_be_sent_again(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing filed, the form's key is let go: the resend is filed, not told "in progress"."""
    office = await world.office()
    sign_in(client, world, "09125557012")
    form = await complaint_form(client, office)
    messenger = client.app.state.container.complaints.messenger

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the outbox is away")

    with monkeypatch.context() as patch:
        patch.setattr(messenger, "queue", broken)
        failed = await file_complaint(client, form)
    assert failed.status_code == 500
    filed = await file_complaint(client, form)
    assert filed.status_code == 303, filed.text
    assert await complaints_filed(world) == 1


async def test_a_refused_tap_shows_a_form_the_next_tap_can_book_with(client: Client, world: World) -> None:
    """Shown again after "this slot is full" with the same slot, each further tap failed the
    same way; after the form came back from the history with its old key and a changed ID,
    the citizen read the API's words about a reused key. Now the full slot gives way to the
    first free one, and a changed form is said so in words a citizen can act on."""
    from app.capacity.plan import DayRule

    office = await world.office(rules=[DayRule(opens="10:00", closes="11:00", slot_minutes=30, seats=1)])
    sign_in(client, world, "09120004545")
    first = await book_form(client, world, office)
    assert (await client.post("/book", data=first, headers=HTML, follow_redirects=False)).status_code == 303
    # Another citizen's form for the same 10:00, sent after it filled.
    full = {**await book_form(client, world, office), "national_id": world.national_id()}
    refused = await client.post("/book", data=full, headers=HTML, follow_redirects=False)
    assert refused.status_code == 409, refused.text
    assert hidden(refused, "slot") == "10:30"  # the next tap: the first free slot, named
    assert "<title>خطا: " in refused.text  # said first, where a screen reader starts again
    again = {
        **full,
        "idem": hidden(refused, "idem"),
        "_csrf": hidden(refused, "_csrf"),
        "slot": hidden(refused, "slot"),
    }
    booked = await client.post("/book", data=again, headers=HTML, follow_redirects=False)
    assert booked.status_code == 303, booked.text
    # The first form again, from the history, its ID changed (a second child).
    changed = {**first, "national_id": world.national_id()}
    reused = await client.post("/book", data=changed, headers=HTML, follow_redirects=False)
    assert reused.status_code == 422, reused.text
    assert "فرم پس از فرستادن تغییر کرده بود" in reused.text


async def test_a_complaint_that_meets_the_record_away_keeps_what_was_typed(
    client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failover as the citizen sent a long complaint: the error page, and Back fetching the
    form again (no page is kept), lost everything typed. The form comes back with it."""
    from sqlalchemy.exc import OperationalError

    from tests.conftest import fails_once

    office = await world.office()
    sign_in(client, world, "09120004646")
    form = {**await complaint_form(client, office), "description": "شرح بلند ماجرا: " + "تعرفه نصب نبود. " * 40}
    fails_once(monkeypatch, client.app.state.container.complaints, "file", OperationalError("", {}, None))
    refused = await client.post("/complaints/new", data=form, headers=HTML, follow_redirects=False)
    assert refused.status_code == 503, refused.text
    assert "تعرفه نصب نبود. " * 40 in refused.text and await complaints_filed(world) == 0
    again = {**form, "_csrf": hidden(refused, "_csrf"), "idem": hidden(refused, "idem")}
    filed = await client.post("/complaints/new", data=again, headers=HTML, follow_redirects=False)
    assert filed.status_code == 303, filed.text
    assert await complaints_filed(world) == 1


async def test_a_full_slot_refused_offers_the_next_free_one_by_its_time(client: Client, world: World) -> None:
    """Told "the slot is full, choose another time", the next tap on the same button booked
    the day's first free time, which the page had not named (the citizen meant to go back)."""
    from app.capacity.plan import DayRule

    office = await world.office(rules=[DayRule(opens="10:00", closes="11:00", slot_minutes=30, seats=1)])
    await world.rebuild()
    day = world.tomorrow().isoformat()
    taken = await client.post(
        "/api/v1/bookings",
        json={
            "national_id": world.national_id(),
            "office_code": office,
            "service_code": "101",
            "date": day,
            "slot": "10:00",
        },
        headers=world.token(),
    )
    assert taken.status_code == 201, taken.text
    sign_in(client, world, "09125557030")
    refused = await client.post("/book", data=await book_form(client, world, office), headers=HTML)
    assert refused.status_code == 409, refused.text
    assert hidden(refused, "slot") == "10:30" and "۱۰:۳۰" in refused.text


async def test_a_complaint_keeps_the_lines_it_was_written_in(client: Client, world: World) -> None:
    """Folded into one line, a long account lost its paragraphs for the guild and the
    regulator who read it."""
    office = await world.office()
    body = {"office_code": office, "category": "other", "description": "ساعت ۱۰ رسیدم.\r\n\r\n  دو ساعت  منتظر ماندم. "}
    filed = await client.post("/api/v1/complaints", json=body, headers=world.token("09125557031"))
    assert filed.status_code == 201, filed.text
    assert filed.json()["description"] == "ساعت 10 رسیدم.\nدو ساعت منتظر ماندم."
    sign_in(client, world, "09125557031")
    page = await client.get(f"/complaints/{filed.json()['tracking_code']}", headers=HTML)
    assert 'class="paragraphs">ساعت 10 رسیدم.\nدو ساعت منتظر ماندم.<' in page.text
