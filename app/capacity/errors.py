from __future__ import annotations

import datetime as dt

from app.errors import DomainError, ServiceUnavailable
from app.locale import to_persian_digits


class SlotFull(DomainError):
    code = "slot_full"
    status = 409
    message_fa = "ظرفیت این نوبت پر شده است. زمان یا دفتر دیگری را انتخاب کنید."
    message_en = "This slot is full. Choose another time or office."


class DayFull(DomainError):
    code = "day_full"
    status = 409
    message_fa = "ظرفیت این دفتر در این روز پر شده است. روز یا دفتر دیگری را انتخاب کنید."
    message_en = "This office has no free slot left that day. Choose another day or office."


class NoSuchSlot(DomainError):
    code = "no_such_slot"
    status = 422
    message_fa = "این دفتر در این زمان نوبت نمی‌دهد."
    message_en = "The office has no slot at that time."


class SlotBegun(NoSuchSlot):
    """A slot of today that has begun: no longer one to book (the same code, for clients that
    know it; a message that says why, for the citizen who picked 10:00 at 10:05)."""

    message_fa = "این نوبت آغاز شده است؛ زمان دیرتری را انتخاب کنید."
    message_en = "That slot has begun; choose a later one."


class OfficeClosed(DomainError):
    code = "office_closed"
    status = 409
    message_fa = "این دفتر در این روز تعطیل است."
    message_en = "The office is closed on that day."


class DayOver(OfficeClosed):
    """Today past the office's last slot: ``office_closed`` still (the code is the API's), in
    words that do not tell a citizen an open office is closed today."""

    message_fa = "نوبت‌های امروز این دفتر تمام شده است؛ روز دیگری را انتخاب کنید."
    message_en = "Today's slots at this office are over; choose another day."


class OfficeBlocked(DomainError):
    code = "office_blocked"
    status = 403
    message_fa = "این دفتر به دلیل تخلف مسدود شده است و نوبت جدید نمی‌پذیرد."
    message_en = "This office is blocked and takes no new bookings."


class DuplicateRequest(DomainError):
    """The same Idempotency-Key is still being processed by another request."""

    code = "request_in_progress"
    status = 409
    message_fa = "همین درخواست در حال انجام است. چند لحظه بعد نتیجه را ببینید."
    message_en = "The same request is still in progress. Check again in a moment."


class TooManyBookings(DomainError):
    code = "too_many_bookings"
    status = 409
    message_fa = "این کد ملی بیش از این نوبت فعال نمی‌تواند داشته باشد."
    message_en = "This national ID holds as many active bookings as it may."

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"A national ID may hold at most {limit} active bookings.",
            detail_fa=f"هر کد ملی حداکثر {to_persian_digits(str(limit))} نوبت فعال می‌تواند داشته باشد.",
            limit=limit,
        )


class AlreadyBookedThatDay(DomainError):
    code = "already_booked"
    status = 409
    message_fa = "این کد ملی برای همین خدمت در همین روز نوبت فعال دارد."
    message_en = "This national ID already has an active booking for this service on that day."


class SeatsAvailable(DomainError):
    code = "seats_available"
    status = 409
    message_fa = "این روز هنوز نوبت خالی دارد؛ به جای فهرست انتظار، نوبت بگیرید."
    message_en = "There are still free slots that day: book one instead of joining the waitlist."


class BookingSuspended(DomainError):
    code = "booking_suspended"
    status = 403
    message_fa = "به دلیل غیبت‌های مکرر، نوبت‌گیری با این کد ملی فعلاً ممکن نیست."
    message_en = "After repeated no-shows this national ID cannot book for now."

    def __init__(self, until: dt.date) -> None:
        from app.locale import jalali_date

        # ``until`` is the first day it may book again: "cannot book until the 8th" read as
        # the 8th included, and citizens waited a day more than they had to.
        super().__init__(
            f"After repeated no-shows this national ID can book again from {until.isoformat()}.",
            detail_fa=(
                f"به دلیل غیبت‌های مکرر، نوبت‌گیری با این کد ملی فعلاً ممکن نیست؛ "
                f"از {jalali_date(until)} دوباره می‌توانید نوبت بگیرید."
            ),
            until=until.isoformat(),
        )


class CapacityRebuilding(ServiceUnavailable):
    """Redis's counters are being counted again from the record (app.capacity.watch):
    whatever would take or free a seat waits, or the count could miss it."""

    def __init__(self) -> None:
        super().__init__("Capacity is being rebuilt; try again in a few seconds.")


class ClosuresChanging(ServiceUnavailable):
    """Closures were added or removed each time a replan wrote its seats: what it wrote may
    be from a calendar already gone, so it is left for the minute's job."""

    def __init__(self) -> None:
        super().__init__("Closures are changing; try again in a few seconds.")
