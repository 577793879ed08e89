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


def test_the_sms_quantiles_are_nearest_rank() -> None:
    """The p99 of a hundred times is the 99th: it had been the largest whenever n <= 100."""
    from loadtests.report import nearest_rank

    times = [float(n) for n in range(1, 101)]
    assert (nearest_rank(times, 0.50), nearest_rank(times, 0.99), nearest_rank(times, 1.0)) == (50.0, 99.0, 100.0)
    assert nearest_rank([], 0.5) is None and nearest_rank([7.0], 0.99) == 7.0


def test_a_run_that_barely_loaded_the_service_is_named_so() -> None:
    """The sign-in codes lost (a worker down): the rush opened with few signed in, booked
    nothing, and the run had passed on an empty record."""
    from types import SimpleNamespace

    from loadtests.run import Run

    run = Run.__new__(Run)
    run.args = SimpleNamespace(scenario="rush")
    run.results = {
        "locust": {
            "rush": {"signed_in": 3, "of": 17},
            "sms": {"sign-in code": {"not_delivered": 14}},
            "bookings_confirmed": {},
        }
    }
    reasons = run.too_little_load()
    assert "3 of 17" in reasons and "never reached" in reasons and "no booking" in reasons
    run.results["locust"] = {
        "rush": {"signed_in": 17, "of": 17},
        "sms": {"sign-in code": {"not_delivered": 0}},
        "bookings_confirmed": {"web": 451},
    }
    assert run.too_little_load() == ""
