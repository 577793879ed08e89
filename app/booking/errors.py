from __future__ import annotations

from app.errors import DomainError, NotFound


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


class IdempotencyKeyReused(DomainError):
    code = "idempotency_key_reused"
    status = 422
    message_fa = "این کلید تکرار قبلاً برای درخواست دیگری به کار رفته است."
    message_en = "This Idempotency-Key was already used for a different request."
