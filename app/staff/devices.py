"""Browsers a staff account has signed in from: a lockout that anyone who knows a username
can set off must not keep the clerk out at their own counter.

An account locks after NOBAT_STAFF_MAX_FAILURES wrong passwords. Usernames are easy to
guess, so anyone could lock every clerk of a province on a rush morning. A browser that
signed in to the account before carries a signed proof of it (a device cookie, as OWASP
describes for this attack), and the account's lockout does not bar it; its own wrong
passwords are counted apart, and lock only it. One cookie holds the proofs of the few
accounts that share an office's computer.

A proof is signed with the account's password hash too, so a new password voids every
proof of the old one, and it says when it was given, so it ends ``REMEMBERED_DAYS`` after
the last sign-in whatever the browser keeps.

Pure functions: the cookie's value in, the account's proof found or added."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

ACCOUNTS_PER_BROWSER = 8
"""Proofs one browser keeps, the newest sign-ins': a counter's computer shared by a shift."""
REMEMBERED_DAYS = 180
"""How long a browser's proof lasts after its last sign-in (and the cookie's life)."""
REMEMBERED_SECONDS = REMEMBERED_DAYS * 86400
MAX_VALUE = 1000  # eight proofs are 8 x 70 characters; anything far longer is not ours
PROOF = re.compile(r"([0-9]{1,12})-([0-9a-f]{16})-([0-9]{1,6})-([0-9a-f]{32})")
"""account id - browser id - day given (a date's ordinal) - signature"""


def _signature(secret: str, account_key: str, account_id: int, nonce: str, given: int) -> str:
    message = f"staff-device:{account_id}:{nonce}:{given}:{account_key}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()[:32]


def _proofs(value: str) -> list[tuple[int, str, int, str]]:
    """The well-formed (account id, browser id, day given, signature) entries of a cookie's value."""
    found = []
    for entry in value[:MAX_VALUE].split(".")[:ACCOUNTS_PER_BROWSER]:
        if match := PROOF.fullmatch(entry):
            found.append((int(match[1]), match[2], int(match[3]), match[4]))
    return found


def known_device(secret: str, value: str, *, account_id: int, account_key: str, today: int) -> str | None:
    """This browser's id for the account when the cookie proves it signed in to it within
    ``REMEMBERED_DAYS`` (``today``: the date's ordinal), with its current password
    (``account_key``: its hash); None otherwise."""
    for account, nonce, given, signature in _proofs(value):
        if (
            account == account_id
            and today - REMEMBERED_DAYS <= given <= today + 1  # +1: another server past midnight
            and hmac.compare_digest(signature, _signature(secret, account_key, account_id, nonce, given))
        ):
            return nonce
    return None


def remember_device(secret: str, value: str, *, account_id: int, account_key: str, today: int) -> str:
    """The cookie's value with the account's proof first (the browser's id kept if it had
    one, given today), the other accounts' after it, the oldest dropped past
    ``ACCOUNTS_PER_BROWSER``."""
    nonce = known_device(secret, value, account_id=account_id, account_key=account_key, today=today)
    nonce = nonce or secrets.token_hex(8)
    mine = (account_id, nonce, today, _signature(secret, account_key, account_id, nonce, today))
    proofs = [mine, *(proof for proof in _proofs(value) if proof[0] != account_id)]
    return ".".join(f"{a}-{n}-{g}-{s}" for a, n, g, s in proofs[:ACCOUNTS_PER_BROWSER])
