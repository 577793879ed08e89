"""A browser's proofs of earlier staff sign-ins (app.staff.devices): pure functions."""

from __future__ import annotations

from app.staff.devices import ACCOUNTS_PER_BROWSER, known_device, remember_device

SECRET = "a secret of at least thirty-two characters"


def test_a_proof_is_known_for_its_account_only() -> None:
    value = remember_device(SECRET, "", 7)
    nonce = known_device(SECRET, value, 7)
    assert nonce is not None
    assert known_device(SECRET, value, 8) is None
    assert known_device("another secret, another deployment", value, 7) is None
    assert remember_device(SECRET, value, 7) == value  # signing in again keeps the same id


def test_proofs_that_are_not_ours_are_not_known() -> None:
    value = remember_device(SECRET, "", 7)
    account, nonce, signature = value.split("-")
    for forged in (
        f"{account}-{nonce}-{'0' * len(signature)}",
        f"8-{nonce}-{signature}",
        f"{account}-{nonce}x-{signature}",
        "7--",
        "",
        "x" * 5000,
        value[:-1],
    ):
        assert known_device(SECRET, forged, 7) is None, forged


def test_a_shared_computer_keeps_the_newest_accounts() -> None:
    value = ""
    for account in range(1, ACCOUNTS_PER_BROWSER + 3):
        value = remember_device(SECRET, value, account)
    kept = [a for a in range(1, ACCOUNTS_PER_BROWSER + 3) if known_device(SECRET, value, a)]
    assert kept == list(range(3, ACCOUNTS_PER_BROWSER + 3))
    again = remember_device(SECRET, value, 5)  # the account signed in again moves to the front
    assert again.startswith("5-") and known_device(SECRET, again, 5) == known_device(SECRET, value, 5)
    assert remember_device(SECRET, "garbage.7-..-", 1).count(".") == 0  # malformed entries dropped
