from __future__ import annotations

from app.errors import DomainError, Forbidden, NotFound


class ActionNotFound(NotFound):
    code = "action_not_found"
    message_fa = "چنین محدودیتی برای این دفتر ثبت نشده است."
    message_en = "This office has no such restriction."


class AppealNotFound(NotFound):
    code = "appeal_not_found"
    message_fa = "چنین اعتراضی ثبت نشده است."
    message_en = "No such appeal."


class AppealNotAllowed(DomainError):
    code = "appeal_not_allowed"
    status = 409
    message_fa = "مهلت اعتراض گذشته، محدودیت برداشته شده یا اعتراض قبلاً ثبت شده است."
    message_en = "The appeal window has passed, the restriction was lifted, or an appeal was already filed."


class AppealDecided(DomainError):
    code = "appeal_decided"
    status = 409
    message_fa = "دربارهٔ این اعتراض قبلاً تصمیم گرفته شده است."
    message_en = "This appeal was already decided."


class OfficeChangedSince(DomainError):
    code = "office_changed"
    status = 409
    message_fa = "وضعیت این دفتر از هنگام باز شدن این صفحه تغییر کرده است؛ صفحه را دوباره ببینید."
    message_en = "The office's status changed since this page was opened; look at it again."


class OfficeNotRestricted(DomainError):
    code = "office_not_restricted"
    status = 409
    message_fa = "این دفتر محدود یا مسدود نیست."
    message_en = "This office is neither restricted nor blocked."


class BlockLiftRegulatorOnly(Forbidden):
    code = "block_lift_regulator_only"
    message_fa = "تنها سازمان تنظیم مقررات می‌تواند انسداد دفتر را بردارد؛ کانون فقط محدودیت را برمی‌دارد."
    message_en = "Only the regulator lifts a block; the guild lifts restrictions only."


class OfficeIsBlocked(DomainError):
    code = "office_is_blocked"
    status = 409
    message_fa = "این دفتر مسدود است؛ برای محدود کردن آن ابتدا انسداد را بردارید."
    message_en = "This office is blocked; lift the block before restricting it."


class OfficeAlreadyBlocked(DomainError):
    code = "office_already_blocked"
    status = 409
    message_fa = "این دفتر از پیش مسدود است و انسداد قبلی همچنان برقرار است."
    message_en = "This office is already blocked; the block in force stands."
