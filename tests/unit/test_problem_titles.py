"""A problem's ``title`` is the same for every occurrence of its code (RFC 9457): an
error's class messages are titles, never templates to be filled in."""

from __future__ import annotations

import pytest

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


def test_a_dependency_unavailable_is_logged_by_which_one_it_is(caplog: pytest.LogCaptureFixture) -> None:
    """Three "TimeoutError"s (Redis's, the pool's, a builtin one) had read alike in the log."""
    from redis.exceptions import TimeoutError as RedisTimeout
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    from app.web import _unavailable

    for error in (RedisTimeout("Timeout reading from socket"), PoolTimeout("QueuePool limit of size 20 reached")):
        assert _unavailable(error).status_code == 503
    lines = [record.getMessage() for record in caplog.records]
    assert any("redis.exceptions.TimeoutError" in line for line in lines)
    assert any("sqlalchemy.exc.TimeoutError: QueuePool limit" in line for line in lines)
