"""Browsers a staff account has signed in from: a lockout that anyone who knows a username
can set off must not keep the clerk out at their own counter.

An account locks after NOBAT_STAFF_MAX_FAILURES wrong passwords. Usernames are easy to
guess, so anyone could lock every clerk of a province on a rush morning. A browser that
signed in to the account before carries a signed proof of it (a device cookie, as OWASP
describes for this attack), and the account's lockout does not bar it; its own wrong
passwords are counted apart, and lock only it. One cookie holds the proofs of the few
accounts that share an office's computer.

Pure functions: the cookie's value in, the account's proof found or added."""

from __future__ import annotations

import hashlib
import hmac
import secrets

ACCOUNTS_PER_BROWSER = 8
"""Proofs one browser keeps, the newest sign-ins': a counter's computer shared by a shift."""
REMEMBERED_SECONDS = 180 * 86400
"""How long a browser's proofs last after its last sign-in (the cookie's life)."""
MAX_VALUE = 1000  # eight proofs are 8 x ~60 characters; anything far longer is not ours


def _signature(secret: str, account_id: int, nonce: str) -> str:
    return hmac.new(secret.encode(), f"staff-device:{account_id}:{nonce}".encode(), hashlib.sha256).hexdigest()[:32]


def _proofs(value: str) -> list[tuple[int, str, str]]:
    """The well-formed (account id, nonce, signature) entries of a cookie's value."""
    found = []
    for entry in value[:MAX_VALUE].split(".")[:ACCOUNTS_PER_BROWSER]:
        account, _, rest = entry.partition("-")
        nonce, _, signature = rest.partition("-")
        if account.isdigit() and nonce and signature:
            found.append((int(account), nonce, signature))
    return found


def known_device(secret: str, value: str, account_id: int) -> str | None:
    """This browser's id for the account (its nonce) when the cookie proves it signed in to
    it before; None otherwise."""
    for account, nonce, signature in _proofs(value):
        if account == account_id and hmac.compare_digest(signature, _signature(secret, account_id, nonce)):
            return nonce
    return None


def remember_device(secret: str, value: str, account_id: int) -> str:
    """The cookie's value with the account's proof first (kept if it had one, else new),
    the other accounts' after it, the oldest dropped past ``ACCOUNTS_PER_BROWSER``."""
    nonce = known_device(secret, value, account_id) or secrets.token_hex(8)
    others = [proof for proof in _proofs(value) if proof[0] != account_id]
    proofs = [(account_id, nonce, _signature(secret, account_id, nonce)), *others]
    return ".".join(f"{a}-{n}-{s}" for a, n, s in proofs[:ACCOUNTS_PER_BROWSER])
