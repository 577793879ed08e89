from __future__ import annotations

from app.errors import DomainError, RateLimited
from app.locale import to_persian_digits


class WrongCode(DomainError):
    code = "otp_wrong"
    status = 400
    message_fa = "کد واردشده درست نیست."
    message_en = "The code is not correct."


class CodeExpired(DomainError):
    code = "otp_expired"
    status = 400
    message_fa = "کد منقضی یا باطل شده است. کد تازه بگیرید."
    message_en = "The code has expired or was used up. Ask for a new one."


def _to(sms_number: str) -> tuple[str, str]:
    """Words naming the number a citizen texts «ورود» to, in Persian and English (none when unknown)."""
    if not sms_number:
        return "", ""
    return f" به {to_persian_digits(sms_number.removeprefix('+'))}", f" to {sms_number}"


class WebCodesBusy(RateLimited):
    """The web's codes for every number together are used up for now (``otp_web_total``): a
    flood of asks for random numbers, or a rush past what the SMS workers send. A code asked
    for by SMS is not counted there, and the detail says how. Still ``rate_limited``."""

    def __init__(self, retry_after: int, *, sms_number: str) -> None:
        super().__init__(retry_after)
        to_fa, to_en = _to(sms_number)
        self.detail_fa = (
            f"درخواست کد از راه وب اکنون بیش از توان ارسال است. برای گرفتن کد، از گوشی خود پیامک «ورود» را{to_fa} "
            "بفرستید، یا کمی بعد دوباره تلاش کنید."
        )
        self.detail_en = (
            f"Too many codes are being asked for on the web right now. Text LOGIN from your phone{to_en}, "
            "or try again shortly."
        )


class CodesUsedUp(RateLimited):
    """The web's codes for a number are used up for now: perhaps by someone else, as anyone
    can ask for any number's codes. The phone's holder can still ask by SMS
    (``CitizenAuth.request_code_by_sms``), and the detail says how. Still ``rate_limited``:
    its title is RateLimited's, the same for every occurrence of the code."""

    def __init__(self, retry_after: int, *, sms_number: str) -> None:
        super().__init__(retry_after)
        to_fa, to_en = _to(sms_number)
        self.detail_fa = (
            f"برای این شماره بیش از حد کد درخواست شده است. برای گرفتن کد، از همین گوشی پیامک «ورود» را{to_fa} بفرستید."
        )
        self.detail_en = f"Too many codes were asked for this number. To get one, text LOGIN from this phone{to_en}."
