import datetime

import jdatetime
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.errors import InvalidInput
from app.locale import (
    MAX_ID,
    WEEKDAY_NAMES,
    check_text,
    jalali_date,
    jalali_datetime,
    jalali_time,
    normalize_digits,
    normalize_text,
    parse_date,
    parse_float,
    parse_int,
    strip_controls,
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


@pytest.mark.parametrize(
    ("value", "expected"),
    [("10", 10), ("۱۰", 10), ("١٠", 10), ("۱0", 10), (" 42 ", 42), ("-۳", -3), ("+7", 7), ("−5", -5), ("007", 7)],
)
def test_parse_int_accepts_every_digit_set(value: str, expected: int) -> None:
    assert parse_int(value, "n") == expected


@pytest.mark.parametrize(
    "value", ["", " ", "²", "١٢³", "１２", "1_000", "1.5", "۱٫۵", "1e3", "0x10", "ten", "--1", "1 2", "\x00"]
)
def test_parse_int_refuses_what_int_would_take_or_nobody_types(value: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_int(value, "limit")
    assert info.value.field == "limit"
    assert info.value.detail_fa == "limit باید عدد صحیح باشد."


def test_parse_int_bounds_say_the_range_in_persian_digits() -> None:
    assert parse_int("۱۰۰", "limit", minimum=1, maximum=100) == 100
    with pytest.raises(InvalidInput) as info:
        parse_int("۱۰۱", "limit", minimum=1, maximum=100)
    assert info.value.detail_en == "limit must be 1 to 100."
    assert info.value.detail_fa == "limit باید بین ۱ و ۱۰۰ باشد."


@pytest.mark.parametrize("value", ["9223372036854775808", "-9223372036854775809", "9" * 10_000])
def test_parse_int_refuses_what_no_column_holds(value: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_int(value, "offset")
    assert info.value.field == "offset"
    assert parse_int(str(2**63 - 1), "offset") == 2**63 - 1


def test_parse_int_id_bound() -> None:
    assert parse_int(str(MAX_ID), "id", minimum=1, maximum=MAX_ID) == MAX_ID
    for value in (str(MAX_ID + 1), "0"):
        with pytest.raises(InvalidInput):
            parse_int(value, "id", minimum=1, maximum=MAX_ID)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("35.7", 35.7), ("۳۵.۷", 35.7), ("۳۵٫۷", 35.7), ("٣٥٫٧", 35.7), ("-۱۲٫۵", -12.5), ("51", 51.0), (".5", 0.5)],
)
def test_parse_float_accepts_persian_digits_and_separator(value: str, expected: float) -> None:
    assert parse_float(value, "lat") == expected


@pytest.mark.parametrize(
    "value", ["", "nan", "NaN", "inf", "-inf", "Infinity", "1e400", "1e3", "3,5", "۳۵٬۷", "²", "1.2.3", "9" * 400]
)
def test_parse_float_refuses_junk_nan_and_infinity(value: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_float(value, "lat")
    assert info.value.field == "lat"


def test_parse_float_bounds() -> None:
    assert parse_float("-۹۰", "lat", minimum=-90, maximum=90) == -90
    with pytest.raises(InvalidInput) as info:
        parse_float("۹۰٫۱", "lat", minimum=-90, maximum=90)
    assert info.value.detail_fa == "lat باید بین -۹۰ و ۹۰ باشد."


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_parse_int_round_trips_persian_digits(n: int) -> None:
    assert parse_int(to_persian_digits(str(n)), "n") == n


def test_check_text() -> None:
    assert check_text("مصوبهٔ ستاد\nبند ۲", "reason", max_length=500, multiline=True) == "مصوبهٔ ستاد\nبند ۲"
    assert check_text(f"سه{ZWNJ}شنبه", "city", max_length=10) == f"سه{ZWNJ}شنبه"
    for value, multiline in (("a\x00b", True), ("a\nb", False), ("\x1b[2J", True)):
        with pytest.raises(InvalidInput) as info:
            check_text(value, "reason", max_length=500, multiline=multiline)
        assert info.value.field == "reason"
    with pytest.raises(InvalidInput) as info:
        check_text("x" * 501, "reason", max_length=500)
    assert info.value.detail_fa == "reason نباید بیش از ۵۰۰ نویسه باشد."


def test_parse_int_reads_any_number_of_leading_zeros() -> None:
    """Past Python's 4,300 digits int() raises ValueError: a limit padded with zeros had
    answered 500."""
    assert parse_int("0" * 5_000 + "5", "limit", minimum=1, maximum=50) == 5
    assert parse_int("-" + "۰" * 5_000 + "۷", "n") == -7
    assert parse_int("0" * 5_000, "n") == 0
    with pytest.raises(InvalidInput) as info:
        parse_int("0" * 5_000 + "9" * 20, "offset")
    assert info.value.detail_en.startswith("offset must be")


def test_a_text_stripped_of_controls_is_one_check_text_takes() -> None:
    """The SMS channel strips what the complaints' check refuses, and no more: a C1 control
    (U+0085) had been left for the check to refuse a texted complaint with."""
    text = "شکایت\x00 از\x85 دفتر\r\n\tبا\u200cنیم‌فاصله"
    stripped = strip_controls(text)
    assert stripped == "شکایت از دفتر\r\n\tبا\u200cنیم‌فاصله"
    assert check_text(stripped, "description", max_length=100, multiline=True) == stripped
    assert strip_controls("BOOK 010001 101") == "BOOK 010001 101"
