"""Iranian national ID (کد ملی) and mobile number validation, normalisation and masking."""

from __future__ import annotations

import random
import re

from app.errors import InvalidInput
from app.locale import INVISIBLE_MARKS, normalize_digits

# Separators people type or paste: whitespace, hyphens, parentheses, and the invisible
# marks copying from RTL text brings along: ZWNJ, ZWJ, the direction marks and the
# embeddings and isolates phones wrap a copied number in (U+202A-202E, U+2066-2069).
_SEPARATORS_RE = re.compile(rf"[\s\-(){INVISIBLE_MARKS}]+")

# [0-9], never \d: \d also matches Persian, Arabic-Indic and other Unicode digits.
_NATIONAL_ID_RE = re.compile(r"[0-9]{10}")
_MOBILE_RE = re.compile(r"9[0-9]{9}")

# Mobile prefixes (after the leading 0), from DOMAIN.md. Not libphonenumber: as of
# phonenumbers 9.0 it rejects 0941 (Irancell) and 0995, which are in use. 0931 (the old
# MTCE/Spadan range, now Hamrah-e Aval) is kept because libphonenumber lists it, and the
# whole 099 block because MVNOs are spread over it.
MOBILE_PREFIXES = frozenset(
    [f"90{i}" for i in range(6)]  # Irancell 0900-0905
    + [f"91{i}" for i in range(10)]  # Hamrah-e Aval 0910-0919
    + [f"92{i}" for i in range(4)]  # Rightel 0920-0923
    + [f"93{i}" for i in range(10)]  # Irancell, Taliya 0932, TeleKish 0934, MTCE 0931
    + ["941"]  # Irancell
    + [f"99{i}" for i in range(10)]  # Hamrah-e Aval 0990-0996 and MVNOs
)


def _national_id_check_digit(first_nine: str) -> int:
    total = sum(int(digit) * (10 - position) for position, digit in enumerate(first_nine))
    remainder = total % 11
    return remainder if remainder < 2 else 11 - remainder


def normalize_national_id(value: str) -> str:
    digits = _SEPARATORS_RE.sub("", normalize_digits(value))
    # Some people (and some old databases) drop the leading zeros.
    if len(digits) in (8, 9):
        digits = digits.zfill(10)
    if not _NATIONAL_ID_RE.fullmatch(digits):
        raise InvalidInput(
            "national_id",
            "The national ID must be 10 digits.",
            detail_fa="کد ملی باید ۱۰ رقم باشد.",
        )
    # Same-digit codes pass the arithmetic but are never issued; they are typed as filler.
    if len(set(digits)) == 1 or int(digits[9]) != _national_id_check_digit(digits[:9]):
        raise InvalidInput(
            "national_id",
            "This national ID is not valid; check the digits.",
            detail_fa="کد ملی واردشده معتبر نیست؛ ارقام را بررسی کنید.",
        )
    return digits


def is_valid_national_id(value: str) -> bool:
    try:
        normalize_national_id(value)
    except InvalidInput:
        return False
    return True


def normalize_mobile(value: str) -> str:
    digits = _SEPARATORS_RE.sub("", normalize_digits(value))
    # Strip the international or trunk prefix, longest first, to reach the bare 9XXXXXXXXX.
    for prefix in ("+98", "0098", "98", "0"):
        if digits.startswith(prefix) and len(digits) == len(prefix) + 10:
            digits = digits[len(prefix) :]
            break
    if not _MOBILE_RE.fullmatch(digits) or digits[:3] not in MOBILE_PREFIXES:
        raise InvalidInput(
            "mobile",
            "Enter an Iranian mobile number like 09121234567.",
            detail_fa="شمارهٔ همراه را به شکل ۰۹۱۲۱۲۳۴۵۶۷ وارد کنید.",
        )
    return "0" + digits


def mobile_to_e164(mobile: str) -> str:
    return "+98" + normalize_mobile(mobile)[1:]


def mask_national_id(nid: str) -> str:
    # Too short to be a real ID: showing four characters would show most of it.
    if len(nid) <= 4:
        return "*" * len(nid)
    return "*" * (len(nid) - 4) + nid[-4:]


def mask_mobile(m: str) -> str:
    """The operator's prefix and the last two digits: enough for a citizen to know their own
    number. The last four had left three digits hidden (a thousand guesses) to anyone holding a
    booking's tracking code."""
    if len(m) < 9:
        return "*" * len(m)
    return m[:4] + "*" * (len(m) - 6) + m[-2:]


def generate_national_id(rng: random.Random) -> str:
    while True:
        first_nine = "".join(str(rng.randrange(10)) for _ in range(9))
        nid = first_nine + str(_national_id_check_digit(first_nine))
        if len(set(nid)) > 1:
            return nid
