import datetime

import jdatetime
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.errors import InvalidInput
from app.locale import (
    WEEKDAY_NAMES,
    jalali_date,
    jalali_datetime,
    jalali_time,
    normalize_digits,
    normalize_text,
    parse_date,
    to_persian_digits,
)

ZWNJ = "\u200c"


def test_normalize_digits_folds_persian_and_arabic_indic() -> None:
    assert normalize_digits("۰۱۲۳۴۵۶۷۸۹") == "0123456789"
    assert normalize_digits("٠١٢٣٤٥٦٧٨٩") == "0123456789"
    assert normalize_digits("کد ۱۲3٤") == "کد 1234"


def test_normalize_digits_leaves_other_unicode_digits_alone() -> None:
    # Fullwidth digits are not something Iranian keyboards produce; validators reject them.
    assert normalize_digits("０１２") == "０１２"


def test_normalize_text_folds_arabic_letters_and_whitespace() -> None:
    assert normalize_text("  علي   كريمي\t ") == "علی کریمی"
    assert normalize_text("مصطفى") == "مصطفی"
    assert normalize_text("پلاک ۱۲") == "پلاک 12"


def test_normalize_text_keeps_zwnj() -> None:
    assert normalize_text(f" سه{ZWNJ}شنبه ") == f"سه{ZWNJ}شنبه"


def test_to_persian_digits() -> None:
    assert to_persian_digits("09:30 2026") == "۰۹:۳۰ ۲۰۲۶"


def test_jalali_date() -> None:
    assert jalali_date(datetime.date(2026, 4, 25)) == "شنبه ۵ اردیبهشت ۱۴۰۵"
    assert jalali_date(datetime.date(2025, 3, 21)) == "جمعه ۱ فروردین ۱۴۰۴"
    assert jalali_date(datetime.date(2026, 3, 20)) == "جمعه ۲۹ اسفند ۱۴۰۴"


def test_jalali_datetime_exact() -> None:
    text = jalali_datetime(datetime.date(2026, 4, 25), datetime.time(9, 30))
    assert text == "شنبه ۵ اردیبهشت ۱۴۰۵، ساعت ۹:۳۰"


def test_jalali_time() -> None:
    assert jalali_time(datetime.time(9, 30)) == "۹:۳۰"
    assert jalali_time(datetime.time(14, 5)) == "۱۴:۰۵"
    assert jalali_time(datetime.time(0, 0)) == "۰:۰۰"


def test_weekday_names_cover_a_week_with_zwnj() -> None:
    start = datetime.date(2026, 4, 25)  # a Saturday
    names = [jalali_date(start + datetime.timedelta(days=i)).split(" ")[0] for i in range(7)]
    assert names == list(WEEKDAY_NAMES)
    assert names[1] == f"یک{ZWNJ}شنبه"
    assert names[3] == f"سه{ZWNJ}شنبه"
    assert names[5] == f"پنج{ZWNJ}شنبه"


@pytest.mark.parametrize(
    "value",
    [
        "2026-04-25",
        "۲۰۲۶-۰۴-۲۵",
        "٢٠٢٦-٠٤-٢٥",
        "2026-۰4-٢5",
        " 2026-04-25 ",
        "1405/02/05",
        "1405-02-05",
        "۱۴۰۵/۰۲/۰۵",
        "١٤٠٥/٠٢/٠٥",
        "1405/2/5",
    ],
)
def test_parse_date_accepts_iso_and_jalali(value: str) -> None:
    assert parse_date(value) == datetime.date(2026, 4, 25)


def test_parse_date_jalali_leap_day() -> None:
    assert parse_date("1403/12/30") == datetime.date(2025, 3, 20)


@pytest.mark.parametrize(
    "value",
    ["", "abc", "25/04/2026", "2026-04", "2026/04-25", "2026-04-25T09:30", "1299/01/01", "۲۰۲۶٫۰۴٫۲۵"],
)
def test_parse_date_rejects_garbage(value: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_date(value, field="day")
    assert info.value.field == "day"
    assert info.value.detail_fa and info.value.detail_en


@pytest.mark.parametrize("value", ["2026-02-30", "2026-13-01", "1404/12/30", "1405/07/31", "1405/00/10"])
def test_parse_date_rejects_nonexistent_dates(value: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_date(value)
    assert info.value.field == "date"
    assert info.value.detail_fa == "چنین تاریخی وجود ندارد."


@given(st.text(alphabet="0123456789"))
def test_persian_digits_round_trip(s: str) -> None:
    assert normalize_digits(to_persian_digits(s)) == s


@given(st.dates(min_value=datetime.date(1925, 1, 1), max_value=datetime.date(2200, 12, 31)))
def test_parse_date_round_trips_jalali_and_iso(d: datetime.date) -> None:
    j = jdatetime.date.fromgregorian(date=d)
    jalali = to_persian_digits(f"{j.year}/{j.month:02d}/{j.day:02d}")
    assert parse_date(jalali) == d
    assert parse_date(d.isoformat()) == d
