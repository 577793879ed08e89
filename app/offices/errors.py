from __future__ import annotations

from app.errors import DomainError, NotFound


class OfficeNotFound(NotFound):
    code = "office_not_found"
    message_fa = "دفتری با این کد پیدا نشد."
    message_en = "No office has this code."


class ServiceNotFound(NotFound):
    code = "service_not_found"
    message_fa = "خدمتی با این کد وجود ندارد."
    message_en = "No service has this code."


class ServiceNotOffered(DomainError):
    code = "service_not_offered"
    status = 422
    message_fa = "این دفتر این خدمت را ارائه نمی‌دهد."
    message_en = "This office does not offer this service."
