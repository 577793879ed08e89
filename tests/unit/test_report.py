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


HOT = ">= 5x the PostgreSQL row-lock baseline on the hot slot"


def test_the_row_lock_ratio_is_judged_only_against_a_durable_record() -> None:
    """SQLite commits without a flush, the row-lock reference with one: no verdict there."""
    results = {
        "settings": {"database": "postgres", "references": "all"},
        "wrk_service": {"bookings_hot": {"ok_rate": 4000.0}},
        "pg_baseline": {"hot": {"ok_rate": 700.0}},
    }
    assert {r["target"]: r for r in targets(results)}[HOT]["met"] is True
    results["settings"]["database"] = "sqlite"
    row = {r["target"]: r for r in targets(results)}[HOT]
    assert row["met"] is None and "not comparable" in row["measured"]


def test_a_row_lock_reference_that_did_not_run_is_a_failed_row() -> None:
    results = {
        "settings": {"database": "postgres", "references": "all"},
        "wrk_service": {"bookings_hot": {"ok_rate": 4000.0}},
    }
    assert {r["target"]: r for r in targets(results)}[HOT]["met"] is False


def test_a_run_with_timeouts_meets_no_latency_target() -> None:
    """wrk leaves a request past its --timeout out of its latencies: its p99 would look fine."""
    fast = {"ok_rate": 9000.0, "latency_ms": {"p99": 10.0}}
    results = {"wrk_service": {"slots": {**fast, "socket_errors": {"timeout": 3}}, "nearby": fast}}
    rows = {r["target"]: r for r in targets(results)}
    assert rows["read path slots >= 6,000 req/s, p99 < 30 ms"]["met"] is False
    assert "3 timed out" in rows["read path slots >= 6,000 req/s, p99 < 30 ms"]["measured"]
    assert rows["read path nearby >= 6,000 req/s, p99 < 30 ms"]["met"] is True
