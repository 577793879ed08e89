"""A problem's ``title`` is the same for every occurrence of its code (RFC 9457): an
error's class messages are titles, never templates to be filled in."""

from __future__ import annotations

import app.main  # noqa: F401  (imports every domain's errors)
from app.booking.errors import TooManyFromMobile
from app.errors import DomainError, problem_body


def every_error(base: type[DomainError] = DomainError) -> list[type[DomainError]]:
    found = []
    for error in base.__subclasses__():
        found += [error, *every_error(error)]
    return found


def test_no_title_is_a_template() -> None:
    errors = every_error()
    assert len(errors) > 30
    templates = [e.__name__ for e in errors if "{" in e.message_en or "{" in e.message_fa]
    assert templates == []


def test_the_detail_says_the_occurrence_and_the_title_does_not() -> None:
    body = problem_body(TooManyFromMobile(10, 3600))
    assert body["title"] == TooManyFromMobile.message_en and "10" not in body["title"]
    assert "10 bookings" in body["detail"] and "۱۰" in body["message_fa"]
    assert body["limit"] == 10 and body["retry_after"] == 3600
