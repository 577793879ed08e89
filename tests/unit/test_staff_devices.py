"""A browser's proofs of earlier staff sign-ins (app.staff.devices): pure functions."""

from __future__ import annotations

from functools import partial

from app.staff.devices import ACCOUNTS_PER_BROWSER, REMEMBERED_DAYS, known_device, remember_device

SECRET = "a secret of at least thirty-two characters"
TODAY = 739_954  # 2026-12-04's ordinal
HASH = "$argon2id$v=19$m=65536,t=3,p=4$the-account's-password-hash"
known = partial(known_device, SECRET, account_key=HASH, today=TODAY)
remember = partial(remember_device, SECRET, account_key=HASH, today=TODAY)


def test_a_proof_is_known_for_its_account_only() -> None:
    value = remember("", account_id=7)
    assert known(value, account_id=7) is not None
    assert known(value, account_id=8) is None
    assert known_device("another secret", value, account_id=7, account_key=HASH, today=TODAY) is None
    assert remember(value, account_id=7) == value  # signing in again the same day changes nothing


def test_a_new_password_or_time_ends_a_proof() -> None:
    value = remember("", account_id=7)
    assert known_device(SECRET, value, account_id=7, account_key=HASH + "new", today=TODAY) is None
    assert known_device(SECRET, value, account_id=7, account_key=HASH, today=TODAY + REMEMBERED_DAYS) is not None
    assert known_device(SECRET, value, account_id=7, account_key=HASH, today=TODAY + REMEMBERED_DAYS + 1) is None
    assert known_device(SECRET, value, account_id=7, account_key=HASH, today=TODAY - 1)  # a server's clock behind
    assert known_device(SECRET, value, account_id=7, account_key=HASH, today=TODAY - 2) is None  # not yet given
    later = remember_device(SECRET, value, account_id=7, account_key=HASH, today=TODAY + 100)
    assert known_device(SECRET, later, account_id=7, account_key=HASH, today=TODAY + REMEMBERED_DAYS + 1)
    assert known_device(SECRET, later, account_id=7, account_key=HASH, today=TODAY + 100) == known(value, account_id=7)


def test_proofs_that_are_not_ours_are_not_known() -> None:
    value = remember("", account_id=7)
    account, nonce, given, signature = value.split("-")
    for forged in (
        f"{account}-{nonce}-{given}-{'0' * len(signature)}",
        f"8-{nonce}-{given}-{signature}",
        f"{account}-{nonce}-{int(given) + 1}-{signature}",
        f"{account}-{nonce}x-{given}-{signature}",
        "\u00b2-" + value[2:],  # a digit int() refuses, as a URL-decoded cookie may carry
        f"{account}-{nonce}-{given}-{signature[:-1]}\u00e9",  # compare_digest refuses non-ASCII
        "7---",
        "",
        "x" * 5000,
        value[:-1],
    ):
        assert known(forged, account_id=7) is None, forged


def test_a_shared_computer_keeps_the_newest_accounts() -> None:
    value = ""
    for account in range(1, ACCOUNTS_PER_BROWSER + 3):
        value = remember(value, account_id=account)
    kept = [a for a in range(1, ACCOUNTS_PER_BROWSER + 3) if known(value, account_id=a)]
    assert kept == list(range(3, ACCOUNTS_PER_BROWSER + 3))
    again = remember(value, account_id=5)  # the account signed in again moves to the front
    assert again.startswith("5-") and known(again, account_id=5) == known(value, account_id=5)
    assert remember("garbage.7-..-", account_id=1).count(".") == 0  # malformed entries dropped
