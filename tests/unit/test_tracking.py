from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.booking.tracking import ALPHABET, LENGTH, new_tracking_code, normalize_tracking_code
from app.errors import InvalidInput


def test_codes_carry_at_least_40_random_bits() -> None:
    assert len(ALPHABET) ** LENGTH >= 2**40
    codes = {new_tracking_code() for _ in range(10_000)}
    assert len(codes) == 10_000
    assert all(len(c) == LENGTH and set(c) <= set(ALPHABET) for c in codes)


@given(st.text(alphabet=ALPHABET, min_size=LENGTH, max_size=LENGTH))
def test_reading_forgives_case_and_separators(code: str) -> None:
    assert normalize_tracking_code(code.lower()) == code
    assert normalize_tracking_code(f" {code[:5]}-{code[5:]} ") == code


def test_look_alike_letters_and_persian_digits_are_folded() -> None:
    assert normalize_tracking_code("oIl23-45678") == "01123 45678".replace(" ", "")
    assert normalize_tracking_code("۰۱۲۳۴۵۶۷۸۹") == "0123456789"


@pytest.mark.parametrize("bad", ["", "ABC", "ABCDEFGHJKM", "ABCDEFGHJ!", "ABCDEFGHJU"])
def test_malformed_codes_are_refused(bad: str) -> None:
    with pytest.raises(InvalidInput):
        normalize_tracking_code(bad)
