"""Persian text and Jalali calendar helpers: digit folding, letter folding, date formatting."""

from __future__ import annotations

import datetime
import re

import jdatetime

from app.errors import InvalidInput

_PERSIAN_DIGITS = "۰۱۲۳۴۵۶۷۸۹"
_ARABIC_INDIC_DIGITS = "٠١٢٣٤٥٦٧٨٩"

# One table for both digit sets so the hot path is a single str.translate call.
# (persiantools needs two passes, ar->fa then fa->en.)
_TO_LATIN_DIGITS = str.maketrans(_PERSIAN_DIGITS + _ARABIC_INDIC_DIGITS, "0123456789" * 2)
_TO_PERSIAN_DIGITS = str.maketrans("0123456789", _PERSIAN_DIGITS)

# Arabic yeh, alef maksura and kaf look like their Persian counterparts but compare unequal,
# and NFKC does not fold them. persiantools' letter fold also strips some kasras, which we
# don't want, so the table is ours.
_TEXT_FOLD = str.maketrans(_PERSIAN_DIGITS + _ARABIC_INDIC_DIGITS + "يىك", "0123456789" * 2 + "ییک")

_ZWNJ = "\u200c"

MONTH_NAMES = (
    "فروردین",
    "اردیبهشت",
    "خرداد",
    "تیر",
    "مرداد",
    "شهریور",
    "مهر",
    "آبان",
    "آذر",
    "دی",
    "بهمن",
    "اسفند",
)

# Indexed from Saturday, the first day of the Iranian week. Written with an explicit ZWNJ
# because libraries disagree on it and an invisible character is easy to lose in an edit.
WEEKDAY_NAMES = (
    "شنبه",
    f"یک{_ZWNJ}شنبه",
    "دوشنبه",
    f"سه{_ZWNJ}شنبه",
    "چهارشنبه",
    f"پنج{_ZWNJ}شنبه",
    "جمعه",
)

# Years in this range are read as Jalali (1300 AP is 1921 CE); from 1700 on as Gregorian.
_JALALI_YEARS = range(1300, 1700)

_DATE_RE = re.compile(r"([0-9]{4})([-/])([0-9]{1,2})\2([0-9]{1,2})")


def normalize_digits(text: str) -> str:
    return text.translate(_TO_LATIN_DIGITS)


def normalize_text(text: str) -> str:
    # str.split() without arguments splits on Unicode whitespace only; ZWNJ is not
    # whitespace, so words like «سه‌شنبه» survive intact.
    return " ".join(text.translate(_TEXT_FOLD).split())


def to_persian_digits(text: str) -> str:
    return text.translate(_TO_PERSIAN_DIGITS)


def _weekday_name(d: datetime.date) -> str:
    # Python counts Monday as 0; shift so Saturday is 0.
    return WEEKDAY_NAMES[(d.weekday() + 2) % 7]


def jalali_date(d: datetime.date) -> str:
    j = jdatetime.date.fromgregorian(date=d)
    day, month, year = int(j.day), int(j.month), int(j.year)
    return to_persian_digits(f"{_weekday_name(d)} {day} {MONTH_NAMES[month - 1]} {year}")


def jalali_time(t: datetime.time) -> str:
    return to_persian_digits(f"{t.hour}:{t.minute:02d}")


def jalali_datetime(d: datetime.date, t: datetime.time) -> str:
    return f"{jalali_date(d)}، ساعت {jalali_time(t)}"


def _invalid_date(field: str, value: str) -> InvalidInput:
    return InvalidInput(
        field,
        f"Enter a date like 2026-04-25 or 1405/02/05 (got {value!r}).",
        detail_fa="تاریخ را به شکل ۱۴۰۵/۰۲/۰۵ یا 2026-04-25 وارد کنید.",
    )


def parse_date(value: str, field: str = "date") -> datetime.date:
    match = _DATE_RE.fullmatch(normalize_text(value))
    if match is None:
        raise _invalid_date(field, value)
    year, month, day = int(match[1]), int(match[3]), int(match[4])
    if year < _JALALI_YEARS.start:
        raise _invalid_date(field, value)
    try:
        if year in _JALALI_YEARS:
            gregorian = jdatetime.date(year, month, day).togregorian()
            return datetime.date(gregorian.year, gregorian.month, gregorian.day)
        return datetime.date(year, month, day)
    except ValueError:
        raise InvalidInput(
            field,
            f"There is no such date: {value!r}.",
            detail_fa="چنین تاریخی وجود ندارد.",
        ) from None
