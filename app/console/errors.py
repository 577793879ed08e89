from __future__ import annotations

from typing import Any

from app.errors import DomainError, NotFound


class CapacityBelowBookings(DomainError):
    """The change would leave booked citizens without a seat; nothing was changed."""

    code = "capacity_below_bookings"
    status = 409
    message_fa = "این تغییر برای نوبت‌های ثبت‌شده جا باقی نمی‌گذارد. یا ظرفیت را کمتر کم کنید یا انتقال نوبت‌ها را بخواهید."
    message_en = "The change leaves booked citizens without a seat. Lower it less, or ask to move the overflow."

    def __init__(self, slots: list[dict[str, Any]]) -> None:
        super().__init__(slots=slots)


class TemplateChanged(DomainError):
    """The weekly plan changed since the one the change was made from; nothing was changed."""

    code = "template_changed"
    status = 409
    message_fa = (
        "برنامهٔ هفتگی پس از باز شدن این صفحه تغییر کرده بود و ذخیره نشد. "
        "برنامهٔ کنونی را ببینید و تغییر خود را دوباره بدهید."
    )
    message_en = "The weekly plan changed since this one was read; nothing was saved."


class CapacityBelowCheckedIn(DomainError):
    """The change would leave citizens already checked in without their seat; nothing was changed."""

    code = "capacity_below_checked_in"
    status = 409
    message_fa = "در این نوبت‌ها کسانی حضور ثبت کرده‌اند که نمی‌توان جابه‌جایشان کرد؛ ظرفیت را کمتر از آنان نکنید."
    message_en = "Citizens already checked in hold these slots and cannot be moved; do not cut below them."

    def __init__(self, slots: list[dict[str, Any]]) -> None:
        super().__init__(slots=slots)


class NoMoreSeatsUnderCap(DomainError):
    """On days under a cap (the office's restriction, or a crowd cap over its province) the
    plan may not add seats: the cap lets a share of them be filled, and more seats would take
    back what it took (only its lift may). Nothing was changed."""

    code = "no_more_seats_under_cap"
    status = 409
    message_fa = (
        "ظرفیت این دفتر در این روزها محدود شده است (محدودیت دفتر یا سقف استانی) و تا رفع آن نمی‌توان ظرفیت را بیشتر کرد."
    )
    message_en = "This office's seats are capped on these days (its restriction, or a crowd cap): none may be added until the cap is lifted."

    def __init__(self, days: list[str]) -> None:
        super().__init__(days=days)


class NotAtThisOffice(NotFound):
    code = "booking_not_at_office"
    message_fa = "این نوبت متعلق به این دفتر نیست."
    message_en = "This booking is not at this office."


class WrongBookingState(DomainError):
    code = "booking_state"
    status = 409
    message_fa = "این کار در وضعیت فعلی نوبت ممکن نیست."
    message_en = "This cannot be done in the booking's current state."


class NotToday(DomainError):
    code = "booking_not_today"
    status = 409
    message_fa = "این نوبت برای امروز نیست."
    message_en = "This booking is not for today."


class NoShowTooEarly(DomainError):
    """The citizen's slot has not started (or its grace has not passed): they may still come."""

    code = "no_show_too_early"
    status = 409
    message_fa = "هنوز نمی‌توان این نوبت را غایب ثبت کرد."
    message_en = "This booking cannot be marked a no-show yet."

    def __init__(self, after: str) -> None:
        from app.locale import to_persian_digits

        super().__init__(
            f"This booking cannot be marked a no-show yet; it can be from {after}.",
            detail_fa=f"هنوز نمی‌توان این نوبت را غایب ثبت کرد؛ از ساعت {to_persian_digits(after)} ممکن است.",
            after=after,
        )
