"""The load test books, and checks the record after it, by the service's own limits."""

from __future__ import annotations

import pytest

from loadtests import workloads


def test_the_load_test_reads_the_limits_the_service_under_test_inherits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOBAT_MAX_ACTIVE_BOOKINGS", "5")
    monkeypatch.setenv("NOBAT_BOOKINGS_PER_MOBILE", "4/3600")
    monkeypatch.setenv("NOBAT_HORIZON_DAYS", "7")
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://elsewhere/nobat")  # not the load test's to read
    limits = workloads.service_settings()
    assert (limits.max_active_bookings, limits.bookings_per_mobile, limits.horizon_days) == (5, "4/3600", 7)
    assert limits.database_url.startswith("sqlite")


def test_the_load_test_uses_the_defaults_when_none_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in workloads.SERVICE_LIMITS:
        monkeypatch.delenv(name, raising=False)
    limits = workloads.service_settings()
    assert (limits.max_active_bookings, limits.bookings_per_mobile, limits.horizon_days) == (3, "10/86400", 14)
