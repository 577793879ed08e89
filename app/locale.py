"""Persian text and Jalali calendar helpers: digit folding, letter folding, date formatting."""

from __future__ import annotations

import datetime
import functools
import math
import re
import unicodedata

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

ZWNJ = "\u200c"

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
    f"یک{ZWNJ}شنبه",
    "دوشنبه",
    f"سه{ZWNJ}شنبه",
    "چهارشنبه",
    f"پنج{ZWNJ}شنبه",
    "جمعه",
)

# Years in this range are read as Jalali (1300 AP is 1921 CE); from 1700 on as Gregorian.
_JALALI_YEARS = range(1300, 1700)

_DATE_RE = re.compile(r"([0-9]{4})([-/])([0-9]{1,2})\2([0-9]{1,2})")


# Numbers as people type them: Persian or Arabic-Indic digits, the Persian decimal separator
# «٫» (U+066B) or a dot, and a minus sign. Matched after folding, against [0-9] only:
# int() and str.isdigit() would also take "²" or fullwidth digits, which are not numbers here.
_INT_RE = re.compile(r"[+-]?[0-9]+")
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_TO_ASCII_NUMBER = str.maketrans({"٫": ".", "−": "-"})
_MAX_NUMBER_CHARS = 32
# What a database integer column holds (PostgreSQL INTEGER); larger ids name nothing.
MAX_ID = 2**31 - 1
_INT64 = (-(2**63), 2**63 - 1)


DIGIT = "[0-9\u06f0-\u06f9\u0660-\u0669]"
"""A regex matching one digit as Iranians type it: Latin, Persian or Arabic-Indic (never \\d,
which matches any script's)."""

INVISIBLE_MARKS = "\u200c\u200d\u200e\u200f\u202a-\u202e\u2066-\u2069"
"""For a regex's character class: ZWNJ, ZWJ, the direction marks, and the embeddings and
isolates phones wrap a number or code in when it is copied out of right-to-left text."""


def normalize_digits(text: str) -> str:
    return text.translate(_TO_LATIN_DIGITS)


def normalize_text(text: str) -> str:
    # str.split() without arguments splits on Unicode whitespace only; ZWNJ is not
    # whitespace, so words like «سه‌شنبه» survive intact.
    return " ".join(text.translate(_TEXT_FOLD).split())


def normalize_paragraphs(text: str) -> str:
    """``normalize_text`` line by line, the lines kept (empty ones dropped): a citizen's
    account of what happened, read by the guild and the regulator as it was set out."""
    return "\n".join(line for line in map(normalize_text, text.splitlines()) if line)


# Dropped from a name as it is compared (``name_key``): spaces and ZWNJ (most phones type
# «خرم آباد» for «خرم‌آباد»), the marks copying from right-to-left text adds, and tatweel.
_NAME_IGNORED = re.compile(f"[\\s{INVISIBLE_MARKS}\u200b\ufeff\u0640]")


def name_key(text: str) -> str:
    """A place's name as searches compare it: «خرم آباد», «خرم‌آباد» and «خرمآباد» alike."""
    return _NAME_IGNORED.sub("", normalize_text(text))


def to_persian_digits(text: str) -> str:
    return text.translate(_TO_PERSIAN_DIGITS)


def _weekday_name(d: datetime.date) -> str:
    # Python counts Monday as 0; shift so Saturday is 0.
    return WEEKDAY_NAMES[(d.weekday() + 2) % 7]


# Dates and times in words are asked for over and over (every booking, every slot shown) and
# there are few of them: converting to the Jalali calendar each time was 5% of a booking.
@functools.lru_cache(maxsize=4096)
def jalali_date(d: datetime.date) -> str:
    j = jdatetime.date.fromgregorian(date=d)
    day, month, year = int(j.day), int(j.month), int(j.year)
    return to_persian_digits(f"{_weekday_name(d)} {day} {MONTH_NAMES[month - 1]} {year}")


@functools.lru_cache(maxsize=2048)
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


def _number_text(value: str) -> str:
    return normalize_digits(value).translate(_TO_ASCII_NUMBER).strip()


def _show(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else repr(number)


def _out_of_range(field: str, minimum: float | None, maximum: float | None) -> InvalidInput:
    if minimum is not None and maximum is not None:
        en = f"{field} must be {_show(minimum)} to {_show(maximum)}."
        fa = f"{field} باید بین {_show(minimum)} و {_show(maximum)} باشد."
    elif minimum is not None:
        en, fa = f"{field} must be at least {_show(minimum)}.", f"{field} نباید کمتر از {_show(minimum)} باشد."
    else:
        en, fa = (
            f"{field} must be at most {_show(maximum or 0)}.",
            f"{field} نباید بیشتر از {_show(maximum or 0)} باشد.",
        )
    return InvalidInput(field, en, detail_fa=to_persian_digits(fa))


def parse_int(value: str, field: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """A whole number typed in any of the digit sets we accept, within [minimum, maximum]
    (each bound by default what a 64-bit database column holds)."""
    text = _number_text(value)
    if not _INT_RE.fullmatch(text):
        raise InvalidInput(
            field, f"{field} must be a whole number (got {value[:40]!r}).", detail_fa=f"{field} باید عدد صحیح باشد."
        )
    low = _INT64[0] if minimum is None else minimum
    high = _INT64[1] if maximum is None else maximum
    # Compare lengths before converting: int() of a 10k-digit string is refused by Python
    # itself, leading zeros included ("limit=000…0005" had answered 500).
    sign, digits = ("-" if text.startswith("-") else ""), text.lstrip("+-").lstrip("0") or "0"
    if len(digits) > 19 or not low <= (number := int(sign + digits)) <= high:
        raise _out_of_range(field, low, high)
    return number


def check_range(value: int, field: str, *, minimum: int, maximum: int) -> int:
    """A number already parsed (by the framework, or a caller) within [minimum, maximum]."""
    if not minimum <= value <= maximum:
        raise _out_of_range(field, minimum, maximum)
    return value


def parse_float(value: str, field: str, *, minimum: float | None = None, maximum: float | None = None) -> float:
    """A decimal number (Persian «٫» or a dot as the decimal point), finite, within bounds.
    NaN, infinities and exponents are refused: nobody types them into a form."""
    text = _number_text(value)
    if len(text) > _MAX_NUMBER_CHARS or not _FLOAT_RE.fullmatch(text):
        raise InvalidInput(
            field, f"{field} must be a number (got {value[:40]!r}).", detail_fa=f"{field} باید عدد باشد."
        )
    number = float(text)
    if not math.isfinite(number):  # the pattern admits none; kept so the contract does not rest on it
        raise InvalidInput(field, f"{field} must be a number.", detail_fa=f"{field} باید عدد باشد.")
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise _out_of_range(field, minimum, maximum)
    return number


LINE_BREAKS = "\n\r\t"
"""The control characters a text of several lines may hold (``check_text``)."""


def strip_controls(text: str) -> str:
    """``text`` without the control characters (Unicode's Cc, C1 ones too) but those a text of
    several lines may hold: what ``check_text`` with ``multiline`` then takes."""
    if text.isprintable():  # most texts: no look at each character
        return text
    return "".join(c for c in text if c in LINE_BREAKS or unicodedata.category(c) != "Cc")


def check_text(value: str, field: str, *, max_length: int, multiline: bool = False, label_fa: str | None = None) -> str:
    """Refuse text no one types: control characters (NUL above all, which PostgreSQL cannot
    store) and more than ``max_length`` characters. Returns the value unchanged. The Persian
    message names ``label_fa`` (what a citizen's form calls the field), else the field."""
    label = label_fa or field
    if len(value) > max_length:
        raise InvalidInput(
            field,
            f"{field} must be at most {max_length} characters.",
            detail_fa=f"{label} نباید بیش از {to_persian_digits(str(max_length))} نویسه باشد.",
        )
    allowed = LINE_BREAKS if multiline else ""
    if any(unicodedata.category(c) == "Cc" and c not in allowed for c in value):
        raise InvalidInput(
            field, f"{field} contains characters that are not allowed.", detail_fa=f"{label} نویسهٔ غیرمجاز دارد."
        )
    return value
