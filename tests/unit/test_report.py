"""The load test's targets table (loadtests.report)."""

from __future__ import annotations

from loadtests.report import targets


def test_a_reference_that_answered_nothing_is_a_failed_row_not_a_missing_one() -> None:
    results = {
        "wrk_service": {"bookings_spread": {"ok_rate": 2500.0, "latency_ms": {"p99": 40.0}}},
        "bare_reserve": {"spread": {"ok_rate": 0.0}},
    }
    rows = {row["target"]: row for row in targets(results)}
    assert rows[">= 40% of the bare reserve endpoint"]["met"] is False


def test_the_share_of_the_bare_endpoint() -> None:
    results = {
        "wrk_service": {"bookings_spread": {"ok_rate": 2500.0, "latency_ms": {"p99": 40.0}}},
        "bare_reserve": {"spread": {"ok_rate": 5000.0}},
    }
    row = {row["target"]: row for row in targets(results)}[">= 40% of the bare reserve endpoint"]
    assert row["ratio"] == 0.5 and row["met"] is True
