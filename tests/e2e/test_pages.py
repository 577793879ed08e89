"""The web pages end to end, in a real browser against the app as it runs in production form.

The tests run in file order and share one app: the citizen's booking from the first test is
the one the office staff check in in the second.
"""

from __future__ import annotations

import datetime as dt
import random
import re
import time
from typing import TYPE_CHECKING, Any

import pytest
from playwright.sync_api import expect

from app.identity import generate_national_id

if TYPE_CHECKING:
    from tests.e2e.conftest import Server, Site

_rng = random.Random(1405)
CITIZEN_NID = generate_national_id(_rng)
WALK_IN_NID = generate_national_id(_rng)
CITIZEN_MOBILE = "09121110001"
FORM_ERROR_MOBILE = "09121110002"
COMPLAINT_MOBILE = "09121110003"
NARROW_MOBILE = "09121110004"
RESTRICTED_OFFICE = "020001"  # Razavi Khorasan's first office; its province is Mashhad on the map
SLOT_MINUTES = 30  # the demo offices' slots (``default_template``): they start on the hour and half hour


def sign_in_citizen(page: Any, server: Server, mobile: str) -> None:
    """On the sign-in page: ask for a code, read it from the SMS outbox, type it in."""
    seen = server.outbox_ids()
    page.get_by_label("شمارهٔ همراه").fill(mobile)
    page.get_by_role("button", name="فرستادن کد").click()
    page.wait_for_url(re.compile(r"/signin/code\?"))
    page.get_by_label("کد ورود").fill(server.sms_code(mobile, after=seen))
    page.get_by_role("button", name="ورود").click()


def sign_in_staff(page: Any, site: Site, username: str, password: str) -> None:
    page.goto("/office/signin")
    site.check(page)
    page.get_by_label("نام کاربری").fill(username)
    page.get_by_label("گذرواژه").fill(password)
    page.get_by_role("button", name="ورود").click()


def iranian_weekday(day: dt.date) -> int:
    return (day.weekday() + 2) % 7


def next_working_day(site: Site) -> dt.date:
    """Tomorrow, or Saturday when tomorrow is Friday (the demo offices' day off)."""
    day = site.today() + dt.timedelta(days=1)
    return day + dt.timedelta(days=1) if iranian_weekday(day) == 6 else day


def clear_of_a_slot_start(site: Site, seconds: float = 60) -> None:
    """Wait, when a slot starts within ``seconds``: a test that books today's first free slot
    would see it begin while the citizen signs in, and be refused (rightly) as begun."""
    now = site.now()
    left = SLOT_MINUTES * 60 - ((now.minute % SLOT_MINUTES) * 60 + now.second + now.microsecond / 1e6)
    if left < seconds:
        time.sleep(left + 1)


def test_citizen_books_the_least_busy_office(phone: Any, site: Site, server: Server, journey: dict[str, str]) -> None:
    clear_of_a_slot_start(site)  # the first free slot is today's next, in office hours
    page = phone.new_page()
    page.goto("/")
    site.check(page)
    site.shot(page, "citizen-home")

    page.get_by_label("خدمت موردنیاز").select_option("101")
    page.get_by_label("شهر").fill("تهران")
    page.get_by_role("button", name="نشان دادن دفترهای خلوت‌تر").click()
    page.wait_for_url(re.compile(r"/offices\?"))
    cards = page.locator(".office-card")
    expect(cards.first).to_be_visible()
    site.check(page)
    site.shot(page, "citizen-offices", full_page=False)
    # Ranked least busy first: on a fresh network the top office is quiet ("خلوت").
    first = cards.first
    expect(first.locator(".badge-low")).to_have_text("خلوت")
    office = first.get_attribute("data-office")
    assert office

    first.get_by_role("link", name=re.compile("انتخاب این دفتر")).click()
    page.wait_for_url(re.compile(rf"/offices/{office}\?"))
    site.check(page)
    # With no day chosen, the page opens on the first day that has a free seat, first free slot ticked.
    expect(page.locator(".slots input:checked")).to_have_count(1)
    site.shot(page, "citizen-office")
    page.get_by_role("button", name="ادامه و گرفتن نوبت").click()

    page.wait_for_url(re.compile(r"/signin\?next="))
    site.check(page)
    site.shot(page, "citizen-signin")
    sign_in_citizen(page, server, CITIZEN_MOBILE)
    page.wait_for_url(re.compile(r"/book\?"))
    site.check(page)
    page.get_by_label("کد ملی").fill(CITIZEN_NID)
    site.shot(page, "citizen-book")
    page.get_by_role("button", name="ثبت نوبت").click()

    page.wait_for_url(re.compile(r"/bookings/[0-9A-Z]{10}\?new=1"))
    expect(page.get_by_role("heading", level=1)).to_have_text("نوبت شما ثبت شد")
    tracking = page.locator("[data-tracking-code]").inner_text().strip()
    assert re.fullmatch(r"[0-9A-Z]{10}", tracking)
    when = page.locator("[data-date]")
    # The Jalali date with Persian digits, e.g. «دوشنبه ۲ آذر ۱۴۰۵، ساعت ۸:۳۰».
    expect(when).to_have_text(re.compile(r"^\S+ [۰-۹]+ \S+ [۰-۹]{4}، ساعت [۰-۹]+:[۰-۹]{2}$"))
    expect(page.locator("[data-status]")).to_have_attribute("data-status", "booked")
    site.check(page)
    site.shot(page, "citizen-confirmation")
    journey.update(office=office, tracking=tracking, date=when.get_attribute("data-date") or "")

    # Anyone with the code can look the booking up.
    page.goto("/lookup")
    site.check(page)
    page.get_by_label("کد رهگیری").fill(tracking.lower())
    page.get_by_role("button", name="نشان دادن نوبت").click()
    page.wait_for_url(re.compile(rf"/bookings/{tracking}$"))
    expect(page.locator("[data-tracking-code]")).to_have_text(tracking)


def test_staff_check_the_citizen_in(desk: Any, site: Site, server: Server, journey: dict[str, str]) -> None:
    """Works at any hour and on any weekday: when the citizen's booking is for today it is
    checked in; when it is for a later day (evening, Friday), the staff find it with the date
    picker, then open extra hours today with a date override and check in a walk-in instead."""
    if "tracking" not in journey:
        pytest.skip("needs the citizen's booking from the first test")
    office, tracking, day = journey["office"], journey["tracking"], dt.date.fromisoformat(journey["date"])
    page = desk.new_page()
    sign_in_staff(page, site, *server.staff_account(office))
    page.wait_for_url(re.compile(rf"/office/{office}/queue$"))
    site.check(page)

    # Capacity: closing the booking's weekday would strand the citizen, so it is refused,
    # with the slot named.
    page.goto(f"/office/{office}/capacity")
    site.check(page)
    site.shot(page, "office-capacity")
    # The saved plan is shown in Persian digits, as the rest of the page.
    expect(page.locator(f"#f-d{iranian_weekday(day)}_seats")).to_have_value(re.compile("^[۰-۹]+$"))
    expect(page.get_by_label("از ساعت", exact=True)).to_have_value("۰۸:۰۰")
    page.locator(f"#f-d{iranian_weekday(day)}_open").uncheck()
    page.get_by_role("button", name="ذخیرهٔ برنامهٔ هفتگی").click()
    refusal = page.locator("[data-refusal]")
    expect(refusal).to_be_visible()
    expect(refusal.locator(f"tr[data-slot^='{day.isoformat()} ']")).to_have_count(1)
    site.check(page)
    site.shot(page, "office-capacity-refused")

    page.goto(f"/office/{office}/queue")
    today = site.today()
    if day == today:
        row = page.locator(f"tr[data-tracking='{tracking}']")
        expect(row.locator("[data-status]")).to_have_attribute("data-status", "booked")
    else:
        page.get_by_label("روز", exact=True).select_option(day.isoformat())
        page.get_by_role("button", name="نشان دادن صف").click()
        later = page.locator(f"tr[data-tracking='{tracking}']")
        expect(later.locator("[data-status]")).to_have_attribute("data-status", "booked")
        expect(later.get_by_role("button")).to_have_count(0)  # check-in is for today's bookings only
        site.check(page)
        site.shot(page, "office-queue-later-day")
        tracking = open_today_and_walk_in(page, site, office)
        if not tracking:
            pytest.skip("within minutes of midnight in Tehran no slot fits today; the later day was checked")
        row = page.locator(f"tr[data-tracking='{tracking}']")

    # «نیامد» asks first (it counts toward a suspension): declined, nothing is sent.
    asked: list[str] = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    row.get_by_role("button", name=re.compile("نیامد")).click()
    expect(row.locator("[data-status]")).to_have_attribute("data-status", "booked")
    assert asked and tracking in asked[0]
    row.get_by_role("button", name=re.compile("حاضر شد")).click()
    expect(page.locator(".notice")).to_have_text("حضور ثبت شد.")
    expect(page).to_have_url(re.compile(rf"#t-{tracking}$"))  # back at the row, not the top of a long queue
    expect(row.locator("[data-status]")).to_have_attribute("data-status", "checked_in")
    page.get_by_label("هم‌اکنون چند نفر در دفتر منتظرند؟").fill("۴")
    page.get_by_role("button", name="ثبت تعداد منتظران").click()
    expect(page.locator(".notice")).to_have_text("تعداد منتظران ثبت شد.")
    expect(page.get_by_label("هم‌اکنون چند نفر در دفتر منتظرند؟")).to_have_value("۴")  # as saved, in Persian digits
    site.check(page)
    site.shot(page, "office-queue")
    row.get_by_role("button", name=re.compile("خدمت گرفت")).click()
    expect(row.locator("[data-status]")).to_have_attribute("data-status", "served")

    page.goto(f"/office/{office}/notices")
    site.check(page)


def open_today_and_walk_in(page: Any, site: Site, office: str) -> str | None:
    """Open the rest of today with a date override, then register a walk-in; its tracking code
    (None when not even a 5-minute slot fits before midnight)."""
    now = site.now()
    start = (now + dt.timedelta(minutes=2)).replace(second=0, microsecond=0)
    start += dt.timedelta(minutes=-start.minute % 5)  # up to the next 5 minutes (never minute 60)
    if start.date() != now.date() or start.time() > dt.time(23, 50):
        return None
    page.goto(f"/office/{office}/capacity")
    page.get_by_label("روز", exact=True).select_option(now.date().isoformat())
    page.get_by_label("ساعت کاری ویژه").check()
    page.get_by_label("از ساعت", exact=True).fill(start.strftime("%H:%M"))
    page.get_by_label("تا ساعت", exact=True).fill("23:59")
    page.get_by_label("طول نوبت (دقیقه)", exact=True).fill("5")
    page.get_by_label("ظرفیت هر نوبت", exact=True).fill("2")
    page.get_by_label("دلیل").fill("ساعت کاری اضافه برای آزمون")
    page.get_by_role("button", name="ذخیرهٔ برنامهٔ ویژه").click()
    expect(page.locator(".notice")).to_have_text(re.compile("برنامهٔ ویژه"))
    expect(page.locator(f"tr[data-date='{now.date().isoformat()}']")).to_have_attribute("data-source", "override")
    site.check(page)

    page.goto(f"/office/{office}/queue")
    page.get_by_label("کد ملی").fill(WALK_IN_NID)
    page.get_by_label("خدمت", exact=True).select_option("101")
    page.get_by_role("button", name="ثبت مراجعهٔ حضوری").click()
    expect(page.locator(".notice")).to_have_text(re.compile("مراجعهٔ حضوری"))
    highlighted = page.locator("tr.highlight")
    expect(highlighted).to_have_count(1)
    return highlighted.get_attribute("data-tracking")


def test_regulator_restricts_and_the_guild_sees_it(desk: Any, site: Site, server: Server) -> None:
    page = desk.new_page()
    sign_in_staff(page, site, "regulator", "regulator-demo-pass")
    page.wait_for_url(re.compile(r"/watch$"))
    site.check(page)

    page.get_by_label("کد دفتر").fill(RESTRICTED_OFFICE)
    page.get_by_role("button", name="نشان دادن سابقهٔ دفتر").click()
    page.wait_for_url(re.compile(rf"/watch/offices/{RESTRICTED_OFFICE}$"))
    site.check(page)
    # A reason is required: the error is shown beside the field.
    page.get_by_role("button", name="محدود کردن").click()
    expect(page.locator("#f-restrict_reason-error")).to_have_text(re.compile("دلیل را بنویسید"))
    page.get_by_label("دلیل").first.fill("ازدحام و نداشتن سامانهٔ نوبت‌دهی (گزارش مردمی)")
    page.get_by_role("button", name="محدود کردن").click()
    expect(page.locator(".notice")).to_have_text("دفتر محدود شد.")
    expect(page.locator("[data-office-status]")).to_have_attribute("data-office-status", "restricted")
    expect(page.locator("tr[data-kind='restrict']")).to_have_count(1)
    site.check(page)
    site.shot(page, "watch-office")

    page.get_by_role("button", name=re.compile("خروج")).click()
    page.wait_for_url(re.compile(r"/office/signin"))
    sign_in_staff(page, site, "guild", "guild-demo-pass")
    page.wait_for_url(re.compile(r"/watch$"))
    row = page.locator(f"tr[data-office='{RESTRICTED_OFFICE}']")
    expect(row).to_contain_text("محدود")
    marker = page.locator("[data-map] g[data-province='Razavi Khorasan']")
    expect(marker).to_have_attribute("data-count", "1")
    expect(marker.locator("text")).to_have_text("خراسان رضوی ۱")
    site.check(page)
    site.shot(page, "watch-guild")

    page.get_by_role("combobox", name="استان").select_option("Tehran")
    page.get_by_role("button", name="پالایش").click()
    expect(page.locator(f"tr[data-office='{RESTRICTED_OFFICE}']")).to_have_count(0)
    page.get_by_role("combobox", name="استان").select_option("Razavi Khorasan")
    page.get_by_role("button", name="پالایش").click()
    expect(page.locator(f"tr[data-office='{RESTRICTED_OFFICE}']")).to_have_count(1)
    # The CSV export is the API's, authorised by the same staff cookie.
    csv_url = page.get_by_role("link", name="دریافت فایل CSV").get_attribute("href")
    response = page.request.get(csv_url)
    assert response.status == 200
    assert RESTRICTED_OFFICE in response.text()


def test_an_office_appeals_and_the_regulator_overturns_it(desk: Any, site: Site, server: Server) -> None:
    office = "030001"  # another province's first office: the guild's map above is not touched
    page = desk.new_page()
    sign_in_staff(page, site, "regulator", "regulator-demo-pass")
    page.wait_for_url(re.compile(r"/watch$"))
    page.goto(f"/watch/offices/{office}")
    page.get_by_label("دلیل").first.fill("نداشتن سامانهٔ نوبت‌دهی")
    page.get_by_role("button", name="محدود کردن").click()
    expect(page.locator("[data-office-status]")).to_have_attribute("data-office-status", "restricted")
    page.get_by_role("button", name=re.compile("خروج")).click()
    page.wait_for_url(re.compile(r"/office/signin"))

    sign_in_staff(page, site, *server.staff_account(office))
    page.wait_for_url(re.compile(rf"/office/{office}/queue$"))
    page.goto(f"/office/{office}/notices")
    page.get_by_label("متن اعتراض").fill("سامانهٔ نوبت‌دهی را راه انداختیم.")
    page.get_by_role("button", name="ثبت اعتراض").click()
    expect(page.locator("[data-appeal-outcome]")).to_have_attribute("data-appeal-outcome", "pending")
    page.get_by_role("button", name=re.compile("خروج")).click()
    page.wait_for_url(re.compile(r"/office/signin"))

    sign_in_staff(page, site, "regulator", "regulator-demo-pass")
    page.wait_for_url(re.compile(r"/watch$"))
    page.goto(f"/watch/offices/{office}")
    expect(page.locator("[data-appeal]")).to_contain_text("سامانهٔ نوبت‌دهی را راه انداختیم.")
    site.check(page)
    site.shot(page, "watch-appeal")
    page.get_by_label("دلیل تصمیم").fill("بازدید تأیید کرد.")
    page.get_by_role("button", name="پذیرفتن اعتراض").click()
    expect(page.locator(".notice")).to_have_text(re.compile("اعتراض پذیرفته شد"))
    expect(page.locator("[data-appeal-outcome]")).to_have_attribute("data-appeal-outcome", "overturned")
    expect(page.locator("[data-office-status]")).to_have_attribute("data-office-status", "active")
    expect(page.get_by_role("button", name="پذیرفتن اعتراض")).to_have_count(0)
    site.check(page)


def test_invalid_national_id_is_shown_beside_the_field(phone: Any, site: Site, server: Server) -> None:
    page = phone.new_page()
    # A later day: today's first free slot could begin between the two taps, and be refused as begun.
    page.goto(f"/offices/010002?service=101&date={next_working_day(site).isoformat()}")
    page.get_by_role("button", name="ادامه و گرفتن نوبت").click()
    page.wait_for_url(re.compile(r"/signin\?next="))
    sign_in_citizen(page, server, FORM_ERROR_MOBILE)
    page.wait_for_url(re.compile(r"/book\?"))
    page.get_by_label("کد ملی").fill("1234567890")
    page.get_by_role("button", name="ثبت نوبت").click()

    field = page.locator(".field.has-error")
    expect(field.locator(".field-error")).to_have_text(re.compile("کد ملی واردشده معتبر نیست"))
    expect(field.get_by_label("کد ملی")).to_have_value("1234567890")
    expect(page.get_by_label("کد ملی")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("کد ملی")).to_have_attribute("aria-describedby", re.compile("f-national_id-error"))
    # A screen reader starts again at the title, and then at the focus: both say it failed.
    expect(page).to_have_title(re.compile("^خطا: "))
    expect(page.get_by_label("کد ملی")).to_be_focused()
    site.check(page)
    site.shot(page, "citizen-form-error")

    # Corrected, it books; signed in with the same mobile, the citizen may cancel it.
    page.get_by_label("کد ملی").fill("۰۴۹۹۳۷۰۸۹۹")  # Persian digits, as a phone keyboard types them
    page.get_by_role("button", name="ثبت نوبت").click()
    page.wait_for_url(re.compile(r"/bookings/[0-9A-Z]{10}\?new=1"))
    # Asked first (it cannot be undone): declined, the booking stands; accepted, it goes.
    asked: list[str] = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    page.get_by_role("button", name="لغو این نوبت").click()
    expect(page.locator("[data-status]")).to_have_attribute("data-status", "booked")
    assert asked and "لغو شود" in asked[0]
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="لغو این نوبت").click()
    expect(page.locator(".notice")).to_have_text(re.compile("نوبت لغو شد"))
    expect(page.locator("[data-status]")).to_have_attribute("data-status", "cancelled")
    site.check(page)


def test_complaint_is_filed_and_followed(phone: Any, desk: Any, site: Site, server: Server) -> None:
    page = phone.new_page()
    page.goto("/complaints")
    site.check(page)
    page.get_by_role("link", name="ثبت شکایت").click()
    page.wait_for_url(re.compile(r"/signin\?next="))
    sign_in_citizen(page, server, COMPLAINT_MOBILE)
    page.wait_for_url(re.compile(r"/complaints/new$"))
    page.get_by_label("کد دفتر").fill("۰۱۰۰۰۳")
    page.get_by_label("موضوع شکایت").select_option("overcharging")
    page.get_by_label("شرح ماجرا").fill("بد")
    page.get_by_role("button", name="ثبت شکایت").click()
    # Too short: the error beside the description, the other answers kept.
    expect(page.locator("#f-description-error")).to_be_visible()
    expect(page.get_by_label("کد دفتر")).to_have_value("۰۱۰۰۰۳")
    expect(page.get_by_label("موضوع شکایت")).to_have_value("overcharging")
    site.check(page)
    page.get_by_label("شرح ماجرا").fill("برای سیم‌کارت ۳۰۰ هزار تومان گرفتند؛ تعرفه نصب نشده بود.")
    site.shot(page, "citizen-complaint-new")
    page.get_by_role("button", name="ثبت شکایت").click()
    page.wait_for_url(re.compile(r"/complaints/[0-9A-Z]{10}\?"))
    code = page.locator("[data-tracking-code]").inner_text().strip()
    expect(page.locator("[data-state]")).to_have_attribute("data-state", "received")
    site.check(page)

    regulator = desk.new_page()
    sign_in_staff(regulator, site, "regulator", "regulator-demo-pass")
    regulator.wait_for_url(re.compile(r"/watch$"))
    regulator.goto("/watch/complaints")
    site.check(regulator)
    site.shot(regulator, "watch-complaints")
    regulator.locator(f"tr[data-complaint='{code}'] a").click()
    regulator.get_by_label("مرحلهٔ بعد").select_option("under_review")
    regulator.get_by_label("یادداشت برای شاکی").fill("کارشناس پرونده را بررسی می‌کند.")
    regulator.get_by_role("button", name="ثبت مرحله").click()
    expect(regulator.locator("[data-state]")).to_have_attribute("data-state", "under_review")
    site.check(regulator)
    site.shot(regulator, "watch-complaint")

    page.goto(f"/complaints/{code}")
    expect(page.locator("[data-state]")).to_have_attribute("data-state", "under_review")
    expect(page.locator(".timeline li")).to_have_count(2)
    site.check(page)
    site.shot(page, "citizen-complaint")


def test_on_a_360_px_phone_the_header_is_two_rows(phone: Any, site: Site, server: Server) -> None:
    """The brand, then the whole menu on one line, signed out and signed in: the page's own
    content starts in the first screen of the cheapest phones."""
    page = phone.new_page()
    page.set_viewport_size({"width": 360, "height": 740})
    for signed_in in (False, True):
        if signed_in:
            page.goto("/signin")
            sign_in_citizen(page, server, NARROW_MOBILE)
            page.wait_for_url(re.compile(r"/$"))
        else:
            page.goto("/")
        header = page.locator(".site-header").bounding_box()
        items = [item.bounding_box()["y"] for item in page.locator(".main-nav li").all()]
        assert header["height"] <= 120, f"header {header['height']} px high (signed in: {signed_in})"
        assert len(items) == 4 and max(items) - min(items) < 1, f"menu on more than one row: {items}"
        site.check(page)
    # Signed in, the home page offers to end every sign-in of the number (a lost phone).
    page.get_by_role("button", name="خروج از همهٔ دستگاه‌ها").click()
    page.wait_for_url(re.compile(r"/\?notice=signed_out_everywhere$"))
    expect(page.locator(".notice")).to_have_text("از حساب خود در همهٔ دستگاه‌ها خارج شدید.")
    expect(page.get_by_role("link", name="ورود", exact=True)).to_be_visible()  # signed out here too
    site.check(page)


def test_pages_are_accessible_and_keyboard_friendly(phone: Any, desk: Any, site: Site) -> None:
    page = phone.new_page()
    for path in ("/", "/offices?service=101&city=مشهد", "/offices/010001?service=102", "/lookup", "/signin",
                 "/complaints", "/lookup?tracking_code=nope", "/bookings/ABCDEFGHJK", "/offices/999999",
                 "/signin/code?mobile=09121234567", "/signin/code?mobile=09121234567&texted=1", "/signin/code?texted=1"):  # fmt: skip
        page.goto(path)
        site.check(page)

    # Keyboard: the first Tab reaches the skip link, shown with a visible focus ring; it
    # leads to the main content, and the next Tab's focus is as visible.
    page.goto("/")
    page.keyboard.press("Tab")
    focused = page.evaluate(
        """() => { const el = document.activeElement; const s = getComputedStyle(el);
                   const r = el.getBoundingClientRect();
                   return {cls: el.className, outline: s.outlineStyle, width: parseFloat(s.outlineWidth),
                           shadow: s.boxShadow, top: r.top}; }"""
    )
    assert focused["cls"] == "skip-link"
    assert focused["outline"] != "none" and focused["width"] >= 2
    assert focused["top"] >= 0, "the skip link must come on screen when focused"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    page.keyboard.press("Tab")
    ring = page.evaluate("() => { const s = getComputedStyle(document.activeElement); return [s.outlineStyle, s.outlineWidth, s.boxShadow]; }")  # fmt: skip
    assert ring[0] != "none" and ring[2] != "none", ring

    # "Use my location" (the only script) fills the hidden fields and searches from there.
    located = phone.browser.new_context(
        base_url=site.url, locale="fa-IR", viewport={"width": 390, "height": 844},
        geolocation={"latitude": 29.612345, "longitude": 52.543216}, permissions=["geolocation"],
    )  # fmt: skip
    try:
        shiraz = located.new_page()
        shiraz.goto("/")
        shiraz.get_by_label("خدمت موردنیاز").select_option("101")
        shiraz.get_by_role("button", name="استفاده از موقعیت من").click()
        shiraz.wait_for_url(re.compile(r"/offices\?.*lat=29\.612&lon=52\.543(&|$)"))  # about 100 m, in the URL
        expect(shiraz.locator(".office-card").first).to_contain_text("شیراز")
        site.check(shiraz)
    finally:
        located.close()

    # CSRF: a form posted without this session's token is refused with a page saying why.
    for form in ({"mobile": "09120000000"}, {"mobile": "09120000000", "_csrf": "0" * 64}):
        refused = page.request.post("/signin", form=form)
        assert refused.status == 403
        assert "فرم منقضی شده" in refused.text()

    staff = desk.new_page()
    staff.goto("/office/signin")
    site.check(staff)
    site.shot(staff, "office-signin")
    refused = staff.request.post("/office/signin", form={"username": "guild", "password": "guild-demo-pass"})
    assert refused.status == 403
