"""Inbound SMS text -> a command. Pure: no I/O, no clock (the caller passes ``today``).

Citizens type on every kind of phone: Persian, Arabic-Indic or Latin digits, Arabic ي/ك,
Latin keywords in any case, doubled spaces, ZWNJ, and punctuation or an emoji around the
words. Anything that does not parse becomes ``Help``; ``parse`` never raises, because the
SMS channel answers every message and a bad one must get an explanation, not a 500.
"""

from __future__ import annotations

import datetime
import re
import unicodedata
from collections.abc import Callable
from typing import TypeAlias

import msgspec

from app.booking.tracking import normalize_tracking_code
from app.errors import InvalidInput
from app.identity import normalize_national_id
from app.locale import DIGIT, normalize_digits, normalize_text, parse_date


class Book(msgspec.Struct, frozen=True):
    office_code: str
    service_code: str
    day: datetime.date | None = None
    national_id: str | None = None


class Offices(msgspec.Struct, frozen=True):
    city: str
    service_code: str


class Cancel(msgspec.Struct, frozen=True):
    tracking_code: str


class Status(msgspec.Struct, frozen=True):
    tracking_code: str


class Complain(msgspec.Struct, frozen=True):
    office_code: str
    text: str


class Wait(msgspec.Struct, frozen=True):
    office_code: str
    service_code: str
    day: datetime.date | None = None
    national_id: str | None = None


class Register(msgspec.Struct, frozen=True):
    national_id: str


class SignIn(msgspec.Struct, frozen=True):
    """A sign-in code for the website, sent back to the phone that asked."""


class SignOut(msgspec.Struct, frozen=True):
    """End every sign-in of this number on the website (a lost phone, a shared computer)."""


class Help(msgspec.Struct, frozen=True):
    # None: the text was not a command at all (or was HELP). Otherwise a short Persian
    # sentence saying what was wrong with a known command, sent with that command's own
    # example (``example``, a line of HELP_TEXT_FA), not the whole help.
    reason: str | None = None
    example: str | None = None

    def answer_fa(self) -> str:
        """The reply: the whole help for a text that was no command; for a known command
        written wrong, why, its example, and how to ask for the rest. The whole help after a
        reason was five paid parts of an SMS for one mistyped digit; this is one or two."""
        if self.reason is None:
            return HELP_TEXT_FA
        example = f"\nنمونه: {self.example}" if self.example else ""
        return f"{self.reason}{example}\nهمهٔ دستورها: «راهنما»"


Command: TypeAlias = Book | Offices | Cancel | Status | Complain | Wait | Register | SignIn | SignOut | Help

# Square brackets mark what the citizen fills in; the rest are working examples.
HELP_TEXT_FA = (
    "راهنمای نوبت پیامکی:\n"
    "نوبت ۱۲۳۴۵۶ ۱۰۱ فردا\n"
    "دفاتر تهران ۱۰۱\n"
    "وضعیت [کد رهگیری]\n"
    "لغو [کد رهگیری]\n"
    "انتظار ۱۲۳۴۵۶ ۱۰۱\n"
    "شکایت ۱۲۳۴۵۶ [متن]\n"
    "ثبت [کد ملی]\n"
    "ورود یا خروج (سایت)\n"
    "۱۲۳۴۵۶ کد دفتر و ۱۰۱ کد خدمت است. "
    "پس از کد خدمت می‌توانید تاریخ (۱۴۰۵/۰۹/۰۳، فردا) و کد ملی را بنویسید."
)

# Invisible characters that copying from right-to-left text or some keyboards insert, and
# the Arabic tatweel used to stretch words. ZWNJ is not among them: it is part of spelling.
_INVISIBLE = str.maketrans(
    dict.fromkeys("\u200b\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff\u0640")
)

# Codes run together with a ZWNJ (a Persian keyboard's Shift+Space), a zero-width space or a
# Persian comma are two codes: one 9-digit token was answered "an office code has 6 digits".
# (Not "," : "1,000,000 rials" stays as written.) The zero-width space, which _INVISIBLE
# drops, is a ZWNJ there first.
_BETWEEN_DIGITS = re.compile(f"(?<={DIGIT})[\u200b\u200c\u060c]+(?={DIGIT})")
_ZWSP_BETWEEN_DIGITS = re.compile(f"(?<={DIGIT})\u200b+(?={DIGIT})")

# The keyword is the run of letters at the start, so "لغو:ABCDE-FGHJK" and "book123456"
# still split into keyword and arguments.
_KEYWORD_RE = re.compile(r"[^\W\d_]+")

# [0-9], never \d: \d matches Persian digits too, and the text is already folded to Latin.
_OFFICE_CODE_RE = re.compile(r"[0-9]{6}")
_SERVICE_CODE_RE = re.compile(r"[0-9]{3}")
# For explaining a token that is neither: "1405/13/40" or "1405-13-40" was meant as a date,
# "0499-370-898" (bad check digit) as a national ID.
_LOOKS_LIKE_DATE_RE = re.compile(r".*/|[0-9]{4}-[0-9]{1,2}(-|$)")
_LOOKS_LIKE_ID_RE = re.compile(r"[0-9-]+")

_DAY_OFFSETS = {"امروز": 0, "today": 0, "فردا": 1, "tomorrow": 1}
_MONTHS = frozenset(
    ["فروردین", "اردیبهشت", "خرداد", "تیر", "مرداد", "شهریور", "مهر", "آبان", "آذر", "دی", "بهمن", "اسفند"]
)

_MISSING_OFFICE = "کد دفتر ۶ رقمی را بنویسید."
_BAD_OFFICE = "کد دفتر ۶ رقم است."
_MISSING_SERVICE = "کد خدمت ۳ رقمی را بنویسید."
_BAD_SERVICE = "کد خدمت ۳ رقم است."


class _BadArguments(Exception):
    """A known keyword with missing or malformed arguments; becomes Help(reason)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _is_noise(char: str) -> bool:
    # Punctuation, symbols (emoji included), separators and format characters such as ZWNJ.
    return unicodedata.category(char)[0] in "PSZC"


def _strip_noise(text: str, *, right: bool = True) -> str:
    start, end = 0, len(text)
    while start < end and _is_noise(text[start]):
        start += 1
    while right and end > start and _is_noise(text[end - 1]):
        end -= 1
    return text[start:end]


def _tokens(rest: str) -> list[str]:
    # Noise is stripped per token so "۱۲۳۴۵۶،" or "تهران." read as their words, and a lone
    # "-" or emoji disappears; punctuation inside a token (dates, hyphenated codes) stays.
    return [token for token in (_strip_noise(word) for word in rest.split()) if token]


def _code(tokens: list[str], index: int, pattern: re.Pattern[str], missing: str, bad: str) -> str:
    if index >= len(tokens):
        raise _BadArguments(missing)
    if not pattern.fullmatch(tokens[index]):
        raise _BadArguments(bad)
    return tokens[index]


def _date_or_national_id(token: str, today: datetime.date) -> datetime.date | str:
    offset = _DAY_OFFSETS.get(token.casefold())
    if offset is not None:
        return today + datetime.timedelta(days=offset)
    # Date first: "1405-09-03" with its hyphens dropped is 8 digits, which a national ID
    # may be, but the separators say it was meant as a date.
    try:
        return parse_date(token)
    except InvalidInput:
        pass
    if _compact_date(token):
        # "14050919" is 19 Azar typed without its separators, and also a valid national ID
        # once padded (0014050919): read as an ID, the booking went to the first free day,
        # and the phone was registered to an ID nobody has.
        raise _BadArguments(
            "این عدد هم تاریخ خوانده می‌شود و هم کد ملی: تاریخ را با / بنویسید (مثل ۱۴۰۵/۰۹/۱۹) "
            "و کد ملی را ۱۰ رقمی، با صفرهای اولش."
        )
    try:
        return normalize_national_id(token)
    except InvalidInput as error:
        id_error = error
    # Neither: explain the one the citizen most likely meant. Our own date message, not
    # parse_date's, because over SMS the words امروز/فردا are the easiest way to type one.
    if _LOOKS_LIKE_DATE_RE.match(token):
        raise _BadArguments("تاریخ درست نیست؛ آن را مثل ۱۴۰۵/۰۹/۰۳ یا فردا بنویسید.")
    if _LOOKS_LIKE_ID_RE.fullmatch(token):
        raise _BadArguments(id_error.detail_fa)
    raise _BadArguments("پس از کد خدمت فقط تاریخ (مثل ۱۴۰۵/۰۹/۰۳ یا فردا) و کد ملی بیاید.")


def _compact_date(token: str) -> bool:
    """Eight digits that read as a date, year first (Jalali or Gregorian)."""
    digits = normalize_digits(token)
    if not (len(digits) == 8 and digits.isascii() and digits.isdigit()):
        return False
    try:
        parse_date(f"{digits[:4]}/{digits[4:6]}/{digits[6:]}")
    except InvalidInput:
        return False
    return True


def _visit(rest: str, today: datetime.date) -> tuple[str, str, datetime.date | None, str | None]:
    """The arguments shared by نوبت and انتظار: office, service, then date and ID in any order."""
    tokens = _tokens(rest)
    office_code = _code(tokens, 0, _OFFICE_CODE_RE, _MISSING_OFFICE, _BAD_OFFICE)
    service_code = _code(tokens, 1, _SERVICE_CODE_RE, _MISSING_SERVICE, _BAD_SERVICE)
    if any(token in _MONTHS for token in tokens[2:]):
        # "۳ آذر": a date in words had been answered "the national ID must be 10 digits".
        raise _BadArguments("تاریخ را با عدد بنویسید، مثل ۱۴۰۵/۰۹/۰۳، یا فردا.")
    extras = _digit_groups_joined(tokens[2:])
    if len(extras) > 2:
        raise _BadArguments("پس از کد خدمت فقط تاریخ و کد ملی بیاید.")
    day: datetime.date | None = None
    national_id: str | None = None
    for token in extras:
        value = _date_or_national_id(token, today)
        if isinstance(value, datetime.date):
            if day is not None:
                raise _BadArguments("فقط یک تاریخ بنویسید.")
            day = value
        else:
            if national_id is not None:
                raise _BadArguments("فقط یک کد ملی بنویسید.")
            national_id = value
    return office_code, service_code, day, national_id


def _digit_groups_joined(tokens: list[str]) -> list[str]:
    """Runs of short bare digit groups as one: a national ID is typed as printed on the card,
    "049 937089 9", or split by a ZWNJ (read as a space above); each group alone was refused
    as a national ID. (A date always has its separators or is a word, so it is never in one.)"""
    joined: list[str] = []
    run = False
    for token in tokens:
        # 8 digits or more are a whole ID already (its leading zeros dropped, at most): two
        # of those side by side are two IDs, and answered so.
        group = token.isascii() and token.isdigit() and len(token) < 8
        if group and run:
            joined[-1] += token
        else:
            joined.append(token)
        run = group
    return joined


def _book(rest: str, today: datetime.date) -> Command:
    return Book(*_visit(rest, today))


def _wait(rest: str, today: datetime.date) -> Command:
    return Wait(*_visit(rest, today))


def _offices(rest: str, today: datetime.date) -> Command:
    tokens = _tokens(rest)
    if not tokens:
        raise _BadArguments("نام شهر و کد خدمت را بنویسید.")
    last = tokens[-1]
    if last.casefold() in _DAY_OFFSETS and len(tokens) > 1:
        # "دفاتر تهران ۱۰۱ فردا" had been told to write the service code it had.
        raise _BadArguments("«دفاتر» روز نمی‌گیرد؛ خلوت‌ترین دفترها از امروز به بعد را می‌فرستد.")
    if not any(char.isdigit() for char in last):
        raise _BadArguments(_MISSING_SERVICE)
    service_code = _code(tokens, len(tokens) - 1, _SERVICE_CODE_RE, _MISSING_SERVICE, _BAD_SERVICE)
    city = normalize_text(" ".join(tokens[:-1]))
    if not any(char.isalpha() for char in city):
        raise _BadArguments("نام شهر را پیش از کد خدمت بنویسید.")
    return Offices(city=city, service_code=service_code)


def _tracking_code(rest: str) -> str:
    # Joined because the code may come split by spaces ("abcde fghjk"); the tracking
    # module also drops hyphens and folds case and look-alike letters.
    code = "".join(_tokens(rest))
    if not code:
        raise _BadArguments("کد رهگیری را بنویسید.")
    try:
        return normalize_tracking_code(code)
    except InvalidInput as error:
        raise _BadArguments(error.detail_fa) from None


def _cancel(rest: str, today: datetime.date) -> Command:
    return Cancel(tracking_code=_tracking_code(rest))


def _status(rest: str, today: datetime.date) -> Command:
    return Status(tracking_code=_tracking_code(rest))


def _complain(rest: str, today: datetime.date) -> Command:
    rest = _strip_noise(rest, right=False)
    office_word, _, text = rest.partition(" ")
    # The office code run into the text by a ZWNJ or a Persian comma ("۱۲۳۴۵۶،۲ ساعت"): split
    # there only. Everywhere in the text, "۱۰۰۰،۰۰۰ ریال" is the citizen's number, kept whole.
    joined = _BETWEEN_DIGITS.search(office_word)
    if joined is not None:
        office_word, text = rest[: joined.start()], rest[joined.end() :]
    office_code = _code(_tokens(office_word), 0, _OFFICE_CODE_RE, _MISSING_OFFICE, _BAD_OFFICE)
    # The citizen's words are kept as typed (after normalize_text), trailing "!!" included;
    # only the separator between code and text (" - ", ": ") is dropped.
    text = _strip_noise(text, right=False)
    if not any(char.isalnum() for char in text):
        raise _BadArguments("متن شکایت را پس از کد دفتر بنویسید.")
    return Complain(office_code=office_code, text=text)


def _register(rest: str, today: datetime.date) -> Command:
    # «ثبت‌نام» (register), as people say it, with or without its half-space: the «نام» had
    # been read as the start of the national ID, "the ID must be 10 digits".
    tokens = _tokens(rest)
    if tokens[:1] == ["نام"]:
        tokens = tokens[1:]
    # Joined because people group the digits: "049 937089 9".
    national_id = "".join(tokens)
    if not national_id:
        raise _BadArguments("کد ملی را بنویسید.")
    try:
        return Register(national_id=normalize_national_id(national_id))
    except InvalidInput as error:
        raise _BadArguments(error.detail_fa) from None


def _sign_in(rest: str, today: datetime.date) -> Command:
    return SignIn()  # whatever follows the word: "ورود لطفا" asks for a code all the same


def _sign_out(rest: str, today: datetime.date) -> Command:
    return SignOut()


def _help(rest: str, today: datetime.date) -> Command:
    return Help(None)


# Keys are casefolded; normalize_text has already folded Arabic ي/ك, so "شكايت" is here too.
_COMMANDS: dict[str, Callable[[str, datetime.date], Command]] = {
    "نوبت": _book,
    "book": _book,
    "دفاتر": _offices,
    "offices": _offices,
    "لغو": _cancel,
    "cancel": _cancel,
    "وضعیت": _status,
    "status": _status,
    "شکایت": _complain,
    "complain": _complain,
    "انتظار": _wait,
    "wait": _wait,
    "ثبت": _register,
    "ثبتنام": _register,
    "reg": _register,
    "register": _register,
    "ورود": _sign_in,
    "login": _sign_in,
    "خروج": _sign_out,
    "logout": _sign_out,
    "راهنما": _help,
    "help": _help,
}


# Each command's line of HELP_TEXT_FA, sent with a refusal of it.
_EXAMPLES: dict[Callable[[str, datetime.date], Command], str] = {
    handler: line
    for handler, keyword in (
        (_book, "نوبت"),
        (_offices, "دفاتر"),
        (_status, "وضعیت"),
        (_cancel, "لغو"),
        (_wait, "انتظار"),
        (_complain, "شکایت"),
        (_register, "ثبت"),
    )
    for line in HELP_TEXT_FA.splitlines()
    if line.startswith(keyword + " ")
}


def parse(text: str, *, today: datetime.date) -> Command:
    """Read one inbound SMS. ``today`` (Tehran's date) resolves امروز/فردا."""
    text = _ZWSP_BETWEEN_DIGITS.sub("\u200c", text)
    body = _strip_noise(normalize_text(text.translate(_INVISIBLE)), right=False)
    match = _KEYWORD_RE.match(body)
    if match is None:
        return Help(None)
    handler = _COMMANDS.get(match[0].casefold())
    if handler is None:
        return Help(None)
    rest = body[match.end() :]
    if handler is not _complain:  # a complaint's own words keep "۱۰۰۰،۰۰۰ ریال" (``_complain``)
        rest = _BETWEEN_DIGITS.sub(" ", rest)
    try:
        return handler(rest, today)
    except _BadArguments as error:
        return Help(error.reason, _EXAMPLES.get(handler))
