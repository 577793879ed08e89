"""Tracking codes: short enough to type from an SMS, impossible to guess, forgiving to read.

Ten characters of Crockford's base32 carry 50 random bits. The alphabet has no I, L, O or U,
and reading folds the look-alikes (i, l -> 1; o -> 0) and ignores case, spaces, hyphens and the invisible marks of a copied text.
"""

from __future__ import annotations

import re
import secrets

from app.errors import InvalidInput
from app.locale import INVISIBLE_MARKS, normalize_digits

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
LENGTH = 10  # 10 x 5 bits = 50 random bits
_FOLD = str.maketrans({"I": "1", "L": "1", "O": "0"})
_VALID = re.compile(f"[{ALPHABET}]{{{LENGTH}}}")
# What people type between the characters, and what a phone adds when the code is copied.
SEPARATORS = re.compile(rf"[\s\-_.{INVISIBLE_MARKS}]+")


def new_tracking_code() -> str:
    # One read of the system's randomness (not one per character: it showed in the profile).
    bits = int.from_bytes(secrets.token_bytes((LENGTH * 5 + 7) // 8))
    return "".join(ALPHABET[(bits >> (5 * i)) & 31] for i in range(LENGTH))


def normalize_tracking_code(value: str) -> str:
    code = SEPARATORS.sub("", normalize_digits(value)).upper().translate(_FOLD)
    if not _VALID.fullmatch(code):
        raise InvalidInput(
            "tracking_code",
            "A tracking code is 10 letters and digits.",
            detail_fa="کد رهگیری ۱۰ حرف و رقم لاتین است.",
        )
    return code
