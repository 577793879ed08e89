from __future__ import annotations

from app.errors import DomainError


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


class NotJson(DomainError):
    code = "unsupported_media_type"
    status = 415
    message_fa = "بدنهٔ درخواست باید JSON باشد (Content-Type: application/json)."
    message_en = "Send the body as JSON (Content-Type: application/json)."
