"""Domain errors, and the one place they become HTTP responses.

Services raise these; they know nothing of HTTP. Each error carries a stable machine
code (clients switch on it), the HTTP status it maps to, and a message in Persian and
English. ``problem_details`` turns any of them into an RFC 9457 body.
"""

from __future__ import annotations

from typing import Any, ClassVar


class DomainError(Exception):
    """Base of every error a citizen, clerk or client may be shown."""

    code: ClassVar[str] = "error"
    status: ClassVar[int] = 400
    message_fa: ClassVar[str] = "درخواست نامعتبر است."
    message_en: ClassVar[str] = "The request is not valid."

    def __init__(self, detail_en: str | None = None, *, detail_fa: str | None = None, **extra: Any) -> None:
        self.detail_en = detail_en or self.message_en
        self.detail_fa = detail_fa or self.message_fa
        self.extra = extra
        self.headers: dict[str, str] = {}
        super().__init__(self.detail_en)


class InvalidInput(DomainError):
    """A field failed validation; ``field`` names it so forms can show the error beside it."""

    code = "invalid_input"
    status = 422
    message_fa = "مقدار واردشده معتبر نیست."
    message_en = "A value is not valid."

    def __init__(self, field: str, detail_en: str, *, detail_fa: str, **extra: Any) -> None:
        super().__init__(detail_en, detail_fa=detail_fa, field=field, **extra)
        self.field = field


class InvalidFields(InvalidInput):
    """Several fields of one form failed, each named (``each``): the form shows every error
    at once. Told of one at a time, a clerk sent the form again for each. As a problem, the
    first is the field; ``errors`` lists them all."""

    def __init__(self, each: list[InvalidInput]) -> None:
        first = each[0]
        errors = [{"field": e.field, "detail_en": e.detail_en, "detail_fa": e.detail_fa} for e in each]
        super().__init__(first.field, first.detail_en, detail_fa=first.detail_fa, errors=errors)
        self.each = each


class IdempotencyKeyReused(DomainError):
    """An Idempotency-Key sent again with another request (a booking, a complaint): answered
    with what the first one made, the second would be lost without a word."""

    code = "idempotency_key_reused"
    status = 422
    message_fa = "این کلید تکرار قبلاً برای درخواست دیگری به کار رفته است."
    message_en = "This Idempotency-Key was already used for a different request."


class NotJson(DomainError):
    code = "unsupported_media_type"
    status = 415
    message_fa = "بدنهٔ درخواست باید JSON باشد (Content-Type: application/json)."
    message_en = "Send the body as JSON (Content-Type: application/json)."


class NotFound(DomainError):
    code = "not_found"
    status = 404
    message_fa = "پیدا نشد."
    message_en = "Not found."


class Unauthorized(DomainError):
    code = "unauthorized"
    status = 401
    message_fa = "ابتدا با کد یک‌بارمصرف وارد شوید."
    message_en = "Sign in with a one-time code first."


class Forbidden(DomainError):
    code = "forbidden"
    status = 403
    message_fa = "اجازهٔ این کار را ندارید."
    message_en = "You are not allowed to do this."


class RateLimited(DomainError):
    code = "rate_limited"
    status = 429
    message_fa = "درخواست‌های شما بیش از حد مجاز است. کمی بعد دوباره تلاش کنید."
    message_en = "Too many requests. Try again a little later."

    def __init__(self, retry_after: int, **extra: Any) -> None:
        super().__init__(retry_after=retry_after, **extra)
        self.retry_after = retry_after
        self.headers["Retry-After"] = str(retry_after)


class ServiceUnavailable(DomainError):
    code = "service_unavailable"
    status = 503
    message_fa = "سامانه موقتاً در دسترس نیست. چند لحظه بعد دوباره تلاش کنید."
    message_en = "The service is temporarily unavailable. Try again in a moment."

    def __init__(self, detail_en: str | None = None, *, retry_after: int = 5, **extra: Any) -> None:
        super().__init__(detail_en, retry_after=retry_after, **extra)
        self.headers["Retry-After"] = str(retry_after)


PROBLEM_TYPE_BASE = "https://nobat.ir/problems/"


def problem_body(error: DomainError) -> dict[str, Any]:
    """The RFC 9457 body of a domain error (the ``type`` URI names the stable code). Its
    extra members come first: one named like a standard member (a booking's "status") must
    not replace it."""
    return {
        **error.extra,
        "type": PROBLEM_TYPE_BASE + error.code,
        "title": error.message_en,
        "status": error.status,
        "detail": error.detail_en,
        "code": error.code,
        "message_fa": error.detail_fa,
        "message_en": error.detail_en,
    }
