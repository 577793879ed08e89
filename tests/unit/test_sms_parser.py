from __future__ import annotations

import datetime
import re
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.locale import normalize_digits, to_persian_digits
from app.sms.parser import (
    HELP_TEXT_FA,
    Book,
    Cancel,
    Command,
    Complain,
    Help,
    Offices,
    Register,
    SignIn,
    SignOut,
    Status,
    Wait,
    parse,
)

TODAY = datetime.date(2026, 11, 20)
TOMORROW = datetime.date(2026, 11, 21)
AZAR_3 = datetime.date(2026, 11, 24)  # 1405/09/03
NID = "0499370899"  # valid (DOMAIN.md)
NID_TWO_ZEROS = "0012345679"  # valid, typed without its leading zeros as 12345679
ZWNJ = "\u200c"


def to_arabic_indic(text: str) -> str:
    return text.translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))


def to_mixed(text: str) -> str:
    # Alternate the three digit sets, as a phone with a half-switched keyboard does.
    sets = ("0123456789", "۰۱۲۳۴۵۶۷۸۹", "٠١٢٣٤٥٦٧٨٩")
    return "".join(sets[i % 3][int(c)] if c.isascii() and c.isdigit() else c for i, c in enumerate(text))


def latin(text: str) -> str:
    return text


DIGIT_FORMS: list[Callable[[str], str]] = [latin, to_persian_digits, to_arabic_indic, to_mixed]
digit_forms = pytest.mark.parametrize("form", DIGIT_FORMS, ids=["latin", "persian", "arabic-indic", "mixed"])


def p(text: str) -> Command:
    return parse(text, today=TODAY)


# --- نوبت / BOOK and انتظار / WAIT ---------------------------------------------------------


@digit_forms
def test_book_in_every_digit_form(form: Callable[[str], str]) -> None:
    assert p(form("نوبت 123456 101")) == Book("123456", "101", None, None)
    assert p(form(f"نوبت 123456 101 1405/09/03 {NID}")) == Book("123456", "101", AZAR_3, NID)
    assert p(form(f"BOOK 012345 007 {NID} 2026-11-24")) == Book("012345", "007", AZAR_3, NID)


@digit_forms
def test_wait_in_every_digit_form(form: Callable[[str], str]) -> None:
    assert p(form("انتظار 123456 101")) == Wait("123456", "101", None, None)
    assert p(form(f"WAIT 123456 101 {NID} 1405/09/03")) == Wait("123456", "101", AZAR_3, NID)


@pytest.mark.parametrize("keyword", ["نوبت", "BOOK", "book", "Book", "bOoK"])
@pytest.mark.parametrize(
    "extras",
    [
        f"1405/09/03 {NID}",
        f"{NID} 1405/09/03",
        f"2026-11-24 {NID}",
        f"{NID} 2026-11-24",
        f"1405-09-03 {NID}",
        f"1405/9/3 {NID}",
    ],
)
def test_date_and_national_id_in_either_order(keyword: str, extras: str) -> None:
    assert p(f"{keyword} 123456 101 {extras}") == Book("123456", "101", AZAR_3, NID)


@pytest.mark.parametrize(
    ("word", "day"),
    [("امروز", TODAY), ("فردا", TOMORROW), ("today", TODAY), ("TOMORROW", TOMORROW), ("Tomorrow", TOMORROW)],
)
def test_today_and_tomorrow_resolve_against_the_given_date(word: str, day: datetime.date) -> None:
    assert p(f"نوبت ۱۲۳۴۵۶ ۱۰۱ {word}") == Book("123456", "101", day, None)
    assert p(f"wait 123456 101 {NID} {word}") == Wait("123456", "101", day, NID)
    assert parse(f"نوبت ۱۲۳۴۵۶ ۱۰۱ {word}", today=datetime.date(2027, 3, 20)).day == (
        datetime.date(2027, 3, 20) + (day - TODAY)
    )


def test_date_alone_and_national_id_alone() -> None:
    assert p("نوبت ۱۲۳۴۵۶ ۱۰۱ ۱۴۰۵/۰۹/۰۳") == Book("123456", "101", AZAR_3, None)
    assert p(f"نوبت ۱۲۳۴۵۶ ۱۰۱ {to_persian_digits(NID)}") == Book("123456", "101", None, NID)


@pytest.mark.parametrize("typed", ["12345679", "012345679", "0012345679", "۱۲۳۴۵۶۷۹", "٠١٢٣٤٥٦٧٩"])
def test_national_id_without_leading_zeros_is_padded(typed: str) -> None:
    assert p(f"نوبت 123456 101 {typed}") == Book("123456", "101", None, NID_TWO_ZEROS)
    assert p(f"ثبت {typed}") == Register(NID_TWO_ZEROS)


def test_a_date_shaped_token_is_a_date_even_if_its_digits_could_be_an_id() -> None:
    # "20261124" would be an 8-digit ID once padded; the separators make it a date.
    assert p("نوبت 123456 101 2026-11-24").day == AZAR_3


@pytest.mark.parametrize("typed", ["14050919", "۱۴۰۵۰۹۱۹", "14050927"])
def test_a_date_typed_without_separators_is_not_taken_for_a_national_id(typed: str) -> None:
    """19 Azar as eight digits is also a valid ID once padded (0014050919): asked again, not
    booked on the first free day for an ID nobody has."""
    result = p(f"نوبت 123456 101 {typed}")
    assert isinstance(result, Help) and result.reason is not None
    assert "۱۴۰۵/۰۹/۱۹" in result.reason and "کد ملی" in result.reason
    assert p(f"نوبت 123456 101 00{typed}") == Book("123456", "101", None, "00" + normalize_digits(typed))


# --- دفاتر / OFFICES -----------------------------------------------------------------------


@digit_forms
def test_offices_in_every_digit_form(form: Callable[[str], str]) -> None:
    assert p(form("دفاتر تهران 101")) == Offices("تهران", "101")
    assert p(form("OFFICES Tehran 101")) == Offices("Tehran", "101")


def test_offices_city_of_several_words_keeps_zwnj_and_folds_arabic_letters() -> None:
    assert p("دفاتر   بندر  انزلی ۱۰۱") == Offices("بندر انزلی", "101")
    assert p(f"دفاتر اسلام{ZWNJ}شهر ۱۰۱") == Offices(f"اسلام{ZWNJ}شهر", "101")
    assert p("offices كرج ۲۰۲") == Offices("کرج", "202")
    assert p("دفاتر خرم آباد، ١٠١.") == Offices("خرم آباد", "101")


# --- لغو / CANCEL and وضعیت / STATUS -------------------------------------------------------


@pytest.mark.parametrize(
    "typed",
    ["ABCDEFGHJK", "abcdefghjk", "ABCDE-FGHJK", "abcde-fghjk", "abcde fghjk", "ABCDE - FGHJK", " AbCdE  fGhJk "],
)
@pytest.mark.parametrize(
    ("keyword", "command"),
    [("لغو", Cancel), ("CANCEL", Cancel), ("cancel", Cancel), ("وضعیت", Status), ("status", Status)],
)
def test_tracking_codes_with_hyphens_spaces_and_any_case(keyword: str, command: type, typed: str) -> None:
    assert p(f"{keyword} {typed}") == command("ABCDEFGHJK")


@digit_forms
def test_tracking_codes_with_any_digits(form: Callable[[str], str]) -> None:
    assert p(form("لغو 01234-ABCDE")) == Cancel("01234ABCDE")
    assert p(form("STATUS 98765 xyzab")) == Status("98765XYZAB")


# --- شکایت / COMPLAIN ----------------------------------------------------------------------


@digit_forms
def test_complaint_keeps_the_citizens_words(form: Callable[[str], str]) -> None:
    assert p(form("شکایت 123456 سه ساعت در صف ماندم!")) == Complain("123456", "سه ساعت در صف ماندم!")
    assert p(form("complain 123456 waited 3 hours")) == Complain("123456", "waited 3 hours")


def test_complaint_text_is_normalized() -> None:
    # Arabic letters folded, spaces collapsed, ZWNJ kept, the separator after the code dropped.
    assert p(f"شكايت ١٢٣٤٥٦ -  كارمند   پاسخ{ZWNJ}گو نبود") == Complain("123456", f"کارمند پاسخ{ZWNJ}گو نبود")
    assert p("شکایت ۱۲۳۴۵۶: ۲ ساعت معطل شدم") == Complain("123456", "2 ساعت معطل شدم")


# --- ثبت / REG -----------------------------------------------------------------------------


@digit_forms
@pytest.mark.parametrize("keyword", ["ثبت", f"ثبت{ZWNJ}نام", "ثبت نام", "ثبتنام", "REG", "reg", "Register", "REGISTER"])
def test_register_in_every_digit_form(form: Callable[[str], str], keyword: str) -> None:
    assert p(form(f"{keyword} {NID}")) == Register(NID)
    assert p(form(f"{keyword} 0499 370 899")) == Register(NID)
    assert p(form(f"{keyword} 049-937089-9")) == Register(NID)


# --- sloppy typing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  نوبت   ۱۲۳۴۵۶    ۱۰۱  ", Book("123456", "101")),
        ("نوبت ۱۲۳۴۵۶ ۱۰۱.", Book("123456", "101")),
        ("«نوبت ۱۲۳۴۵۶ ۱۰۱»", Book("123456", "101")),
        ("-نوبت ۱۲۳۴۵۶، ۱۰۱، فردا؟", Book("123456", "101", TOMORROW)),
        ("\u200fنوبت\u200f ۱۲۳۴۵۶ ۱۰۱\u200e", Book("123456", "101")),
        (f"{ZWNJ}نوبت{ZWNJ} ۱۲۳۴۵۶ ۱۰۱{ZWNJ}", Book("123456", "101")),
        ("نـوبـت ۱۲۳۴۵۶ ۱۰۱", Book("123456", "101")),  # tatweel
        ("نوبت\n۱۲۳۴۵۶\n۱۰۱", Book("123456", "101")),
        ("book:123456 101", Book("123456", "101")),
        ("لغو:ABCDE-FGHJK", Cancel("ABCDEFGHJK")),
        ("وضعیت ABCDE-FGHJK 🙏", Status("ABCDEFGHJK")),
        ("STATUS ABCDE-FGHJK!", Status("ABCDEFGHJK")),
        ("وضعيت abcde-fghjk", Status("ABCDEFGHJK")),  # Arabic yeh
        ("شكايت ۱۲۳۴۵۶ بد", Complain("123456", "بد")),  # Arabic kaf and yeh
        ("/help", Help(None)),
    ],
)
def test_sloppy_typing_is_forgiven(text: str, expected: Command) -> None:
    assert p(text) == expected


# --- Help ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason_has"),
    [
        ("نوبت", "کد دفتر"),
        ("BOOK 12345 101", "کد دفتر ۶ رقم"),
        ("نوبت ۱۰۱ ۱۲۳۴۵۶", "کد دفتر ۶ رقم"),
        ("نوبت ۱۲۳۴۵۶", "کد خدمت"),
        ("نوبت ۱۲۳۴۵۶ ۱۰", "کد خدمت ۳ رقم"),
        ("نوبت ۱۲۳۴۵۶ ۱۰۱ ۱۴۰۵/۱۳/۴۰", "تاریخ"),
        ("نوبت ۱۲۳۴۵۶ ۱۰۱ ۱۴۰۵/۰۹", "تاریخ"),
        ("نوبت ۱۲۳۴۵۶ ۱۰۱ ۰۴۹۹۳۷۰۸۹۸", "کد ملی"),  # wrong check digit
        ("نوبت ۱۲۳۴۵۶ ۱۰۱ ۱۲۳۴۵", "کد ملی"),
        ("نوبت ۱۲۳۴۵۶ ۱۰۱ پس‌فردا", "تاریخ"),
        ("نوبت ۱۲۳۴۵۶ ۱۰۱ فردا امروز", "یک تاریخ"),
        (f"نوبت ۱۲۳۴۵۶ ۱۰۱ {NID} {NID}", "یک کد ملی"),
        (f"نوبت ۱۲۳۴۵۶ ۱۰۱ فردا {NID} اضافه", "فقط تاریخ و کد ملی"),
        ("انتظار ۱۲۳۴۵۶", "کد خدمت"),
        ("دفاتر", "شهر"),
        ("دفاتر تهران", "کد خدمت"),
        ("دفاتر تهران ۱۰۱۱", "کد خدمت ۳ رقم"),
        ("دفاتر ۱۰۱", "شهر"),
        ("لغو", "کد رهگیری"),
        ("cancel ABCDE", "کد رهگیری"),
        ("وضعیت نوبت من چه شد", "کد رهگیری"),
        ("شکایت", "کد دفتر"),
        ("شکایت کارمند بی‌ادب بود", "کد دفتر"),
        ("شکایت ۱۲۳۴۵۶", "متن شکایت"),
        ("COMPLAIN 123456 !!!", "متن شکایت"),
        ("ثبت", "کد ملی"),
        ("REG 1111111111", "کد ملی"),
        ("REG 12", "کد ملی"),
    ],
)
def test_known_keyword_with_bad_arguments_explains_in_persian(text: str, reason_has: str) -> None:
    result = p(text)
    assert isinstance(result, Help)
    assert result.reason is not None
    assert reason_has in result.reason
    assert not re.search("[0-9]", result.reason), "reasons are written with Persian digits"


@pytest.mark.parametrize(
    "text", ["", "   ", "؟", "...", "سلام", "hello", "۱۲۳۴۵۶ ۱۰۱", "نوبتم کی است", "bookx 123456 101", "HELP", "راهنما"]
)
def test_unknown_text_and_help_give_help_without_reason(text: str) -> None:
    assert p(text) == Help(None)


def test_commands_are_frozen() -> None:
    command = p("نوبت ۱۲۳۴۵۶ ۱۰۱")
    with pytest.raises(AttributeError):
        command.office_code = "654321"  # type: ignore[misc,union-attr]


@pytest.mark.parametrize("text", ["ورود", "LOGIN", "login please", "  ورود!", "ورود 09121234567"])
def test_a_sign_in_code_is_asked_for_by_one_word(text: str) -> None:
    # Whatever follows the word: the code goes to the phone that sent it, never to another.
    assert p(text) == SignIn()


@pytest.mark.parametrize("text", ["خروج", "LOGOUT", "خروج از همه"])
def test_signing_out_everywhere_is_one_word(text: str) -> None:
    assert p(text) == SignOut()


def test_help_text_is_short_persian_and_its_examples_work() -> None:
    assert len(HELP_TEXT_FA) <= 4 * 67  # four parts of a long SMS in Persian: each is paid for
    assert "خروج" in HELP_TEXT_FA
    assert not re.search("[0-9]", HELP_TEXT_FA)
    lines = HELP_TEXT_FA.splitlines()
    for keyword in ("نوبت", "دفاتر", "وضعیت", "لغو", "انتظار", "شکایت", "ثبت", "ورود"):
        assert any(line.startswith(keyword + " ") for line in lines), keyword
    assert p("نوبت ۱۲۳۴۵۶ ۱۰۱ فردا") == Book("123456", "101", TOMORROW)
    assert "نوبت ۱۲۳۴۵۶ ۱۰۱ فردا" in lines
    assert p("دفاتر تهران ۱۰۱") == Offices("تهران", "101")
    assert "دفاتر تهران ۱۰۱" in lines
    assert p("انتظار ۱۲۳۴۵۶ ۱۰۱") == Wait("123456", "101")
    assert "انتظار ۱۲۳۴۵۶ ۱۰۱" in lines


# --- never raises --------------------------------------------------------------------------

COMMAND_TYPES = (Book, Offices, Cancel, Status, Complain, Wait, Register, SignIn, SignOut, Help)
KEYWORDS = [
    "نوبت",
    "دفاتر",
    "لغو",
    "وضعیت",
    "شکایت",
    "انتظار",
    "ثبت",
    "ورود",
    "راهنما",
    "BOOK",
    "offices",
    "reg",
    "wait",
]
PIECES = [
    "123456",
    "۱۲۳۴۵۶",
    "101",
    "١٠١",
    NID,
    "1405/09/03",
    "1405/12/30",
    "1699/12/30",
    "9999-12-31",
    "0000-00-00",
    "1405/99/99",
    "فردا",
    "ABCDE-FGHJK",
    "-",
    "/",
    "،",
    ZWNJ,
    "\u200f",
    "🙏",
    "تهران",
]


@given(st.text())
def test_parse_never_raises_on_arbitrary_text(text: str) -> None:
    assert isinstance(p(text), COMMAND_TYPES)


@given(
    st.sampled_from(KEYWORDS),
    st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=12)), max_size=6),
    st.sampled_from([" ", "", "  ", ":", "\n"]),
    st.dates(),
)
def test_parse_never_raises_on_keyword_messages(
    keyword: str, pieces: list[str], separator: str, today: datetime.date
) -> None:
    text = keyword + separator + " ".join(pieces)
    assert isinstance(parse(text, today=min(today, datetime.date(9999, 12, 30))), COMMAND_TYPES)


@pytest.mark.parametrize("between", ["\u200c", "\u200b", "،", " \u200c "])
def test_codes_run_together_with_a_zwnj_or_a_persian_comma_are_two_codes(between: str) -> None:
    """Shift+Space on a Persian keyboard writes a ZWNJ, not a space: one 9-digit token had
    been answered "an office code has 6 digits"."""
    expected = Book(office_code="010001", service_code="101", day=None, national_id=None)
    assert parse(f"نوبت ۰۱۰۰۰۱{between}۱۰۱", today=TODAY) == expected
    assert parse(f"BOOK 010001{between}101", today=TODAY) == expected


def test_a_complaints_own_numbers_keep_their_commas() -> None:
    complaint = parse("شکایت 010001 1,000,000 ریال بیشتر گرفتند", today=TODAY)
    assert isinstance(complaint, Complain) and "1,000,000" in complaint.text


@pytest.mark.parametrize("between", [" ", ZWNJ, "\u200b", "،"])
def test_a_national_id_typed_in_groups_is_one_id(between: str) -> None:
    """As printed on the card ("049 937089 9"), or with Shift+Space: each group alone had been
    refused as a national ID, and the booking with it."""
    grouped = between.join(["۰۴۹", "۹۳۷۰۸۹", "۹"])
    assert NID == "0499370899"
    assert p(f"نوبت ۰۱۰۰۰۱ ۱۰۱ {grouped} فردا") == Book("010001", "101", TOMORROW, NID)
    assert p(f"انتظار 010001 101 فردا {grouped}") == Wait("010001", "101", TOMORROW, NID)
    # Two IDs, or an ID and a stray number, are still refused, not read as one.
    assert isinstance(p(f"نوبت 010001 101 {NID} 12"), Help)


@pytest.mark.parametrize("between", [ZWNJ, "\u200b", "،"])
def test_a_complaints_persian_comma_or_zwnj_inside_its_text_stays(between: str) -> None:
    """Only the office code is split from what it runs into: "۱۰۰۰،۰۰۰ ریال" in the text had
    been read as "1000 000", the citizen's words changed."""
    complaint = p(f"شکایت ۰۱۰۰۰۱ ۱۰۰۰{between}۰۰۰ ریال اضافه گرفتند")
    assert isinstance(complaint, Complain) and complaint.office_code == "010001"
    assert "1000 000" not in complaint.text and complaint.text.endswith("ریال اضافه گرفتند")
    assert p(f"شکایت ۰۱۰۰۰۱{between}۲ ساعت معطل شدم") == Complain("010001", "2 ساعت معطل شدم")


@pytest.mark.parametrize(
    ("text", "keyword"),
    [
        ("لغو", "لغو"),
        ("وضعیت", "وضعیت"),
        ("نوبت ۱۲۳۴۵ ۱۰۱", "نوبت"),
        ("نوبت ۱۲۳۴۵۶ ۱۰۱ ۳ آذر", "نوبت"),
        ("دفاتر", "دفاتر"),
        ("انتظار ۱", "انتظار"),
        ("شکایت", "شکایت"),
        ("ثبت ۱۲۳", "ثبت"),
    ],
)
def test_a_command_written_wrong_is_answered_with_its_own_example_in_one_part(text: str, keyword: str) -> None:
    """Each refusal had been its reason and the whole help: five paid parts of an SMS for one
    mistyped digit, to a citizen who needed one line."""
    answer = p(text)
    assert isinstance(answer, Help) and answer.reason
    reply = answer.answer_fa()
    assert reply.startswith(answer.reason) and f"نمونه: {keyword} " in reply and "«راهنما»" in reply
    assert len(reply) <= 2 * 67  # at most two parts; most fit one (70)
    assert Help().answer_fa() == HELP_TEXT_FA  # no command at all: the whole help


def test_a_date_in_words_and_a_day_after_offices_are_told_what_to_write() -> None:
    """«۳ آذر» had been answered "the national ID must be 10 digits", and «دفاتر تهران ۱۰۱
    فردا» "write the service code": each now says what is wrong."""
    in_words = p("نوبت ۱۲۳۴۵۶ ۱۰۱ ۳ آذر")
    assert isinstance(in_words, Help) and in_words.reason and "تاریخ را با عدد" in in_words.reason
    with_a_day = p("دفاتر تهران ۱۰۱ فردا")
    assert isinstance(with_a_day, Help) and with_a_day.reason and "روز نمی" in with_a_day.reason
    assert p("دفاتر تهران ۱۰۱") == Offices("تهران", "101")
