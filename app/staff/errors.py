from __future__ import annotations

import datetime as dt
import math

from app.errors import DomainError, Forbidden, Unauthorized


class WrongCredentials(Unauthorized):
    """An unknown username and a wrong password get this same error: which one it was is
    exactly what someone guessing usernames wants to learn."""

    code = "wrong_credentials"
    message_fa = "نام کاربری یا گذرواژه درست نیست."
    message_en = "The username or password is not correct."


class AccountLocked(DomainError):
    code = "account_locked"
    status = 403
    message_fa = "این حساب پس از چند گذرواژهٔ نادرست پیاپی موقتاً قفل شده است. بعداً دوباره تلاش کنید."
    message_en = "This account is locked for a while after too many wrong passwords. Try again later."

    def __init__(self, locked_until: dt.datetime, *, now: dt.datetime) -> None:
        super().__init__(locked_until=locked_until.isoformat())
        self.locked_until = locked_until
        self.headers["Retry-After"] = str(max(1, math.ceil((locked_until - now).total_seconds())))


class NotYourOffice(Forbidden):
    code = "not_your_office"
    message_fa = "این دفتر در حوزهٔ دسترسی شما نیست."
    message_en = "This office is not yours to manage."
