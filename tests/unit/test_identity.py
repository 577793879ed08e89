import random

import phonenumbers
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.errors import InvalidInput
from app.identity import (
    MOBILE_PREFIXES,
    generate_national_id,
    is_valid_national_id,
    mask_mobile,
    mask_national_id,
    mobile_to_e164,
    normalize_mobile,
    normalize_national_id,
)
from app.locale import to_persian_digits

ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")

# 0499370899 is the worked example in DOMAIN.md; the rest were computed by hand from the
# check-digit rule, and include remainders below 2 (check digit 0 or 1).
VALID_IDS = ["0499370899", "0012345679", "0001234560", "1234567891", "9876543210", "4400000001"]


def digit_forms(value: str) -> list[str]:
    persian = to_persian_digits(value)
    arabic = value.translate(ARABIC_INDIC)
    mixed = "".join((value, persian, arabic)[i % 3][i] for i in range(len(value)))
    return [value, persian, arabic, mixed]


# --- national ID ---------------------------------------------------------------------------


@pytest.mark.parametrize("nid", VALID_IDS)
def test_valid_national_ids(nid: str) -> None:
    assert normalize_national_id(nid) == nid
    assert is_valid_national_id(nid)


@pytest.mark.parametrize("form", digit_forms("0499370899"))
def test_national_id_in_every_digit_form(form: str) -> None:
    assert normalize_national_id(form) == "0499370899"


@pytest.mark.parametrize(
    "value", ["049-937089-9", " 0499 370 899 ", "۰۴۹۹-۳۷۰-۸۹۹", "\u202b۰۴۹۹۳۷۰۸۹۹\u202c", "\u20680499370899\u2069"]
)
def test_national_id_separators_are_stripped(value: str) -> None:
    assert normalize_national_id(value) == "0499370899"


@pytest.mark.parametrize(
    ("short", "padded"),
    [("499370899", "0499370899"), ("12345679", "0012345679"), ("۱۲۳۴۵۶۷۹", "0012345679")],
)
def test_national_id_padding(short: str, padded: str) -> None:
    assert normalize_national_id(short) == padded


@pytest.mark.parametrize("nid", ["0499370898", "0499370890", "1234567890", "0012345678"])
def test_national_id_wrong_check_digit(nid: str) -> None:
    assert not is_valid_national_id(nid)
    with pytest.raises(InvalidInput) as info:
        normalize_national_id(nid)
    assert info.value.field == "national_id"
    assert "معتبر نیست" in info.value.detail_fa


@pytest.mark.parametrize("digit", "0123456789")
def test_same_digit_national_ids_rejected(digit: str) -> None:
    assert not is_valid_national_id(digit * 10)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "abc",
        "1234567",  # 7 digits: too short to pad
        "12345678901",  # 11 digits
        "04993708990",
        "04993708a9",
        "+499370899",
        "０４９９３７０８９９",  # fullwidth digits: \d would accept them, we must not
        "0499370899\n0",
    ],
)
def test_national_id_garbage(value: str) -> None:
    assert not is_valid_national_id(value)
    with pytest.raises(InvalidInput) as info:
        normalize_national_id(value)
    assert info.value.field == "national_id"
    assert info.value.detail_fa and info.value.detail_en


def test_mask_national_id() -> None:
    assert mask_national_id("0499370899") == "******0899"
    assert mask_national_id("123") == "***"


@given(st.integers())
def test_generated_national_ids_validate(seed: int) -> None:
    nid = generate_national_id(random.Random(seed))
    assert len(nid) == 10
    assert len(set(nid)) > 1
    assert normalize_national_id(nid) == nid


@given(st.integers(), st.integers(min_value=1, max_value=9))
def test_changing_check_digit_invalidates(seed: int, shift: int) -> None:
    nid = generate_national_id(random.Random(seed))
    tampered = nid[:9] + str((int(nid[9]) + shift) % 10)
    assert not is_valid_national_id(tampered)


# --- mobile --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "09121234567",
        "+989121234567",
        "00989121234567",
        "989121234567",
        "9121234567",
        "0912 123 4567",
        "0912-123-4567",
        "(0912) 123-4567",
        "+98 (912) 123 4567",
        "\u200e+98 912 123 4567\u200f",
        "\u202a09121234567\u202c",  # as a phone wraps a number copied from RTL text
        "\u2066+98 912 123 4567\u2069",
    ],
)
def test_mobile_forms(value: str) -> None:
    for form in digit_forms(value):
        assert normalize_mobile(form) == "09121234567"


@pytest.mark.parametrize(
    "mobile",
    ["09001234567", "09301234567", "09351234567", "09411234567", "09201234567", "09901234567", "09961234567"],
)
def test_mobile_operator_prefixes(mobile: str) -> None:
    assert normalize_mobile(mobile) == mobile


@pytest.mark.parametrize(
    "value",
    [
        "",
        "abc",
        "02112345678",  # Tehran landline
        "+982112345678",
        "0912123456",  # too short
        "091212345678",  # too long
        "08121234567",
        "09061234567",  # unallocated 090x
        "09501234567",
        "+9809121234567",
        "0912123456a",
        "09+121234567",
    ],
)
def test_invalid_mobiles(value: str) -> None:
    with pytest.raises(InvalidInput) as info:
        normalize_mobile(value)
    assert info.value.field == "mobile"
    assert info.value.detail_fa and info.value.detail_en


def test_mobile_prefixes_cover_libphonenumber() -> None:
    # We use our own table because libphonenumber misses some live prefixes (0941);
    # this catches the opposite drift, a range libphonenumber knows and we reject.
    known = set()
    for prefix in range(900, 1000):
        number = phonenumbers.parse(f"0{prefix}1234567", "IR")
        if phonenumbers.number_type(number) == phonenumbers.PhoneNumberType.MOBILE:
            known.add(str(prefix))
    assert known <= MOBILE_PREFIXES


def test_mobile_to_e164() -> None:
    assert mobile_to_e164("09121234567") == "+989121234567"
    assert mobile_to_e164("۰۹۱۲۱۲۳۴۵۶۷") == "+989121234567"


def test_mask_mobile() -> None:
    assert mask_mobile("09121234567") == "0912*****67"
    assert mask_mobile("0912") == "****"


@given(st.sampled_from(sorted(MOBILE_PREFIXES)), st.integers(min_value=0, max_value=9_999_999))
def test_mobile_forms_agree(prefix: str, rest: int) -> None:
    canonical = f"0{prefix}{rest:07d}"
    bare = canonical[1:]
    for form in (canonical, "+98" + bare, "0098" + bare, "98" + bare, bare, to_persian_digits(canonical)):
        assert normalize_mobile(form) == canonical
