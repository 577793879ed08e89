"""Settings: read from the environment, refused at start when they cannot work."""

from __future__ import annotations

import pytest

from app.settings import load_settings


def test_the_embedded_default_makes_up_a_secret_key() -> None:
    settings = load_settings({})
    assert settings.database_url.startswith("sqlite") and len(settings.secret_key) >= 32


def test_production_without_a_secret_key_does_not_start() -> None:
    with pytest.raises(ValueError, match="NOBAT_SECRET_KEY"):
        load_settings({"DATABASE_URL": "postgresql+asyncpg://nobat@db/nobat"})
    given = load_settings({"DATABASE_URL": "postgresql+asyncpg://nobat@db/nobat", "NOBAT_SECRET_KEY": "k" * 40})
    assert given.secret_key == "k" * 40


def test_a_malformed_value_fails_at_start() -> None:
    with pytest.raises(Exception, match=r"[Hh]orizon|int|NOBAT"):
        load_settings({"NOBAT_HORIZON_DAYS": "fourteen"})
