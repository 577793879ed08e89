from __future__ import annotations

from app.errors import NotFound


class CityNotFound(NotFound):
    code = "city_not_found"
    message_fa = "شهری با این نام پیدا نشد."
    message_en = "No city has this name."
