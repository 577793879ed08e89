"""Our cookies go Secure whenever the service is public over HTTPS, however the scheme is written."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from app.settings import load_settings
from app.web import session_cookie


@pytest.mark.parametrize(
    ("public_url", "secure"),
    [("https://nobat.ir", True), ("HTTPS://nobat.ir", True), ("http://localhost:8000", False)],
)
def test_a_cookie_is_secure_when_the_public_url_is_https(public_url: str, secure: bool) -> None:
    """ "HTTPS://" passed the settings' check (which reads the scheme case-blind) and every
    session cookie, citizens' and clerks', went out without Secure."""
    settings = load_settings({"NOBAT_PUBLIC_URL": public_url})
    container: Any = SimpleNamespace(settings=settings)
    assert session_cookie(container, "nobat_session", "x", max_age=60, samesite="lax").secure is secure
