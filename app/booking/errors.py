from __future__ import annotations

from app.errors import DomainError, NotFound, ServiceUnavailable
from app.locale import to_persian_digits


class BookingNotFound(NotFound):
    code = "booking_not_found"
    message_fa = "نوبتی با این کد رهگیری پیدا نشد."
    message_en = "No booking has this tracking code."


class BookingNotActive(DomainError):
    code = "booking_not_active"
    status = 409
    message_fa = "این نوبت دیگر فعال نیست و نمی‌توان آن را لغو کرد."
    message_en = "This booking is no longer active and cannot be cancelled."


class BookingCheckedIn(DomainError):
    code = "booking_checked_in"
    status = 409
    message_fa = "حضور شما در دفتر ثبت شده است و این نوبت دیگر لغو نمی‌شود."
    message_en = "You have been checked in at the office; the booking can no longer be cancelled."


class BookingStarted(DomainError):
    code = "booking_started"
    status = 409
    message_fa = "زمان این نوبت گذشته است و نمی‌توان آن را لغو کرد."
    message_en = "This booking's time has passed; it can no longer be cancelled."


class NotYourBooking(DomainError):
    code = "not_your_booking"
    status = 403
    message_fa = "این نوبت با شمارهٔ همراه دیگری گرفته شده است."
    message_en = "This booking was made from another mobile number."


class TooManyFromMobile(DomainError):
    """A phone books for its family, each with their own national ID, up to a bound
    (NOBAT_BOOKINGS_PER_MOBILE): without one, one phone took a rush's seats."""

    code = "too_many_bookings_from_mobile"
    status = 429
    message_fa = "با این شمارهٔ همراه بیش از این نوبت نمی‌توان گرفت."
    message_en = "This mobile has made as many bookings as it may for now."

    def __init__(self, limit: int, retry_after: int) -> None:
        super().__init__(
            f"This mobile has made {limit} bookings, the most it may for now. "
            "Try again later, or book for others from their own mobiles.",
            detail_fa=f"با این شمارهٔ همراه {to_persian_digits(str(limit))} نوبت گرفته شده است و بیش از این مجاز نیست. "
            "لطفاً بعداً دوباره تلاش کنید، یا برای دیگران با شمارهٔ همراه خودشان نوبت بگیرید.",
            limit=limit,
            retry_after=retry_after,
        )
        self.headers["Retry-After"] = str(retry_after)


class TrackingCodeTaken(ServiceUnavailable):
    """The tracking code drawn for a new booking or waitlist join is another booking's (50
    random bits: once in ten million draws when a hundred million bookings are kept). Its
    insert was refused and nothing was booked: tried once more with a new code, rather than
    answered "already booked that day" to a citizen with no booking."""

    def __init__(self) -> None:
        super().__init__("Nothing was booked; try again.", retry_after=1)
