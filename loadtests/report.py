"""The results of a run: the whole record as JSON, and a short Markdown table to read or paste."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any

from loadtests.stack import ROOT


def nearest_rank(times: list[float], q: float) -> float | None:
    """The nearest-rank quantile of sorted ``times`` (the p99 of 100 is the 99th, not the 100th)."""
    return round(times[max(0, math.ceil(q * len(times)) - 1)], 2) if times else None


MB = 1024 * 1024


def git_revision() -> str:
    done = subprocess.run(
        ["git", "describe", "--always", "--dirty"], check=False, cwd=ROOT, capture_output=True, text=True
    )
    # A copy outside git (a measurement of an exported commit) says which commit it is.
    return done.stdout.strip() or os.environ.get("NOBAT_REVISION", "unknown")


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets against what this run measured (None where a part did not run)."""
    wrk = results.get("wrk_service", {})
    spread = wrk.get("bookings_spread", {})
    hot = wrk.get("bookings_hot", {})
    bare = results.get("bare_reserve", {}).get("spread", {})
    pg_hot = results.get("pg_baseline", {}).get("hot", {})
    pg_spread = results.get("pg_baseline", {}).get("spread", {})
    ceiling = results.get("ceiling", {}).get("reserve_rate")
    memory = results.get("memory", {}).get("dataset_used_memory")

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    def timed_out(run: dict[str, Any]) -> str:
        # wrk's latencies leave out requests that ran past its --timeout: a p99 with any is no p99.
        n = run.get("socket_errors", {}).get("timeout", 0)
        return f"; {n:,} timed out" if n else ""

    rows: list[dict[str, Any]] = []

    def row(name: str, measured: str, ok: bool | None, ratio_value: float | None = None) -> None:
        rows.append({"target": name, "measured": measured, "ratio": ratio_value, "met": ok})

    booking_rate = spread.get("ok_rate")
    p99 = spread.get("latency_ms", {}).get("p99")
    if booking_rate is not None:
        row(
            "full booking path >= 3,000 confirmed/s, p99 < 50 ms",
            f"{booking_rate:,.0f}/s, p99 {p99:.0f} ms{timed_out(spread)}",
            booking_rate >= 3000 and p99 < 50 and not timed_out(spread),
            ratio(booking_rate, 3000),
        )
    hot_ratio = ratio(hot.get("ok_rate"), pg_hot.get("ok_rate"))
    durable = results.get("settings", {}).get("database") == "postgres"
    if hot_ratio is not None:
        row(
            ">= 5x the PostgreSQL row-lock baseline on the hot slot",
            f"{hot['ok_rate']:,.0f}/s vs {pg_hot['ok_rate']:,.0f}/s"
            # SQLite commits with synchronous=NORMAL (no flush); the reference flushes each one.
            + ("" if durable else " (record SQLite: not comparable; run with --database postgres)"),
            hot_ratio >= 5 if durable else None,
            hot_ratio,
        )
    elif (
        durable
        and hot
        and results.get("pg_baseline") is None
        and results.get("settings", {}).get("references") == "all"
    ):
        row(
            ">= 5x the PostgreSQL row-lock baseline on the hot slot",
            "the reference was not measured: see the notes",
            False,
        )
    spread_ratio = ratio(booking_rate, pg_spread.get("ok_rate"))
    if spread_ratio is not None:  # the issue names no target for it: reported, not judged
        row(
            "the PostgreSQL row-lock baseline spread over 1,000 slots (reported)",
            f"{booking_rate:,.0f}/s vs {pg_spread['ok_rate']:,.0f}/s"
            + ("" if durable else " (record SQLite: not comparable; run with --database postgres)"),
            None,
            spread_ratio,
        )
    bare_ratio = ratio(booking_rate, bare.get("ok_rate"))
    if bare_ratio is not None:
        row(
            ">= 40% of the bare reserve endpoint",
            f"{booking_rate:,.0f}/s vs {bare['ok_rate']:,.0f}/s",
            bare_ratio >= 0.4,
            bare_ratio,
        )
    elif bare:  # it ran and nothing succeeded: a broken reference, not a missing row
        row(">= 40% of the bare reserve endpoint", "the reference answered no 2xx: see the wrk table", False)
    for name in ("slots", "nearby"):
        read = wrk.get(name)
        if read:
            rate, p99_read = read["ok_rate"], read["latency_ms"]["p99"]
            row(
                f"read path {name} >= 6,000 req/s, p99 < 30 ms",
                f"{rate:,.0f}/s, p99 {p99_read:.0f} ms{timed_out(read)}",
                rate >= 6000 and p99_read < 30 and not timed_out(read),
                ratio(rate, 6000),
            )
    if memory is not None:
        row("Redis memory, national dataset, 14 days < 1 GB", f"{memory / MB:,.0f} MB", memory < 1024 * MB)
    ceiling_ratio = ratio(booking_rate, ceiling)
    if ceiling_ratio is not None:
        row(
            "(context) booking rate as a share of raw RESERVE",
            f"{booking_rate:,.0f}/s of {ceiling:,.0f}/s",
            None,
            ceiling_ratio,
        )
    return rows


def markdown(results: dict[str, Any]) -> str:
    out: list[str] = []
    settings = results.get("settings", {})
    machine = results.get("machine", {})
    out.append(f"# Load test: {results['scenario']} ({results['started']})\n")
    out.append(
        f"git {results.get('git')}; {settings.get('users')} users for {settings.get('duration')} s; "
        f"{settings.get('workers')} uvicorn workers (staff: {settings.get('staff_workers', 0)} of their own); record {settings.get('database')}; SMS {settings.get('sms_backend')}; "
        f"NOBAT_TZ {results.get('setup', {}).get('tz')} ({results.get('setup', {}).get('service_time', '-')} there); {machine.get('cores')} cores, load average "
        f"{machine.get('load_at_start')} at start, {machine.get('load_before_wrk', '-')} before wrk, "
        f"{machine.get('load_at_end')} at end.\n"
    )
    if results.get("error"):
        out.append(f"**The run failed:** {results['error']}\n")
    for note in results.get("notes", []):
        out.append(f"- {note}")
    if results.get("notes"):
        out.append("")

    rows = results.get("targets", [])
    if rows:
        out.append("## Targets\n")
        out.append("| target | measured | ratio | met |")
        out.append("| --- | --- | --- | --- |")
        for r in rows:
            met = "-" if r["met"] is None else ("yes" if r["met"] else "**no**")
            out.append(f"| {r['target']} | {r['measured']} | {r['ratio'] if r['ratio'] is not None else '-'} | {met} |")
        out.append("")

    check = results.get("check")
    if check:
        verdict = "OK" if check["ok"] else ("**OVERBOOKED**" if check["overbooked"] else "**counts disagree**")
        out.append("## Correctness\n")
        out.append(
            f"{verdict}: {check['slots']:,} slots of {check['office_days']:,} office-days; seats booked in SQL "
            f"{check['seats_booked_sql']:,}, used in Redis {check['seats_used_redis']:,}; SQL above Redis "
            f"{check['sql_above_redis']}, Redis above SQL {check['redis_above_sql']}, above seats "
            f"{check['used_above_seats']}; office-days with bookings missing in Redis {check.get('days_missing_in_redis', '-')}; "
            f"waitlisted {check.get('waitlisted', '-')}, not in their line in Redis {check.get('waitlisted_not_in_line', '-')}, "
            f"in a line not waiting (or twice) {check.get('line_not_waiting', '-')}; "
            f"same-day violations {check['same_day_violations']}, over the active limit {check['too_many_violations']}, "
            f"mobiles over their bookings {check.get('mobile_over_allowance', '-')}.\n"
        )
        for example in check.get("examples", [])[:5]:
            out.append(f"- {json.dumps(example, ensure_ascii=False)}")
        if check.get("examples"):
            out.append("")

    locust = results.get("locust")
    if locust and locust.get("aggregated"):
        agg = locust["aggregated"]
        out.append("## Locust scenario\n")
        out.append(
            f"{agg['rps']:,.0f} requests/s; bookings confirmed {locust['bookings_confirmed_per_s']:,.1f}/s "
            f"({', '.join(f'{k} {v:,}' for k, v in sorted(locust['bookings_confirmed'].items()))}); "
            f"p50 {agg['p50_ms']} ms, p95 {agg['p95_ms']} ms, p99 {agg['p99_ms']} ms; {agg['failures']:,} failures; "
            f"SMS queue after the run {locust.get('sms_queue_after')}"
            + (f", sent at {locust['sms_sent_per_s']}/s" if "sms_sent_per_s" in locust else "")
            + ".\n"
        )
        if "confirmed_codes" in locust:
            missing = locust.get("confirmed_not_in_record", [])
            out.append(
                f"Bookings confirmed to its users (a 201, an SMS with the code): {locust['confirmed_codes']:,}; "
                + (f"**{len(missing):,} not in the record: LOST**.\n" if missing else "every one in the record.\n")
            )
        rush = locust.get("rush")
        if rush:
            out.append(
                f"The rush opened {rush['opened_after_s']} s after the start with {rush['signed_in']} of "
                f"{rush['of']} citizens signed in, and lasted {rush['window_s']} s: "
                f"{locust.get('rush_window_rps') or '-'} requests/s in that window.\n"
            )
        for exception in locust.get("exceptions", []):
            out.append(f"- **A Locust user raised** ({exception['count']:,}x): {exception['message']}")
        if locust.get("exceptions"):
            out.append("")
        out.append("| endpoint | requests | req/s | p50 ms | p95 ms | p99 ms | failures |")
        out.append("| --- | --- | --- | --- | --- | --- | --- |")
        for e in sorted(locust["endpoints"], key=lambda e: -e["requests"]):
            out.append(
                f"| {e['type']} {e['name']} | {e['requests']:,} | {e['rps']:,.1f} | {e['p50_ms']} | {e['p95_ms']} "
                f"| {e['p99_ms']} | {e['failures']:,} |"
            )
        if locust.get("sms"):
            out.append("\nSMS, from the request to the phone (the RQ queue and worker included):\n")
            out.append("| message | delivered | not delivered | p50 s | p95 s | p99 s | max s |")
            out.append("| --- | --- | --- | --- | --- | --- | --- |")
            for name, s in sorted(locust["sms"].items()):
                out.append(
                    f"| {name} | {s['delivered']:,} | {s['not_delivered']:,} | {s['p50_s']} | {s['p95_s']} "
                    f"| {s['p99_s']} | {s['max_s']} |"
                )
        errors = {k: v for k, v in locust.get("outcomes", {}).items() if _status(k) >= 300 or _status(k) == 0}
        if errors:
            out.append("\nAnswers other than 2xx, by endpoint, status and problem code:\n")
            out.append("| answer | count |")
            out.append("| --- | --- |")
            for key, count in sorted(errors.items(), key=lambda kv: -kv[1]):
                out.append(f"| {key} | {count:,} |")
        out.append("")

    wrk_rows = [(f"nobat {name}", r) for name, r in results.get("wrk_service", {}).items()]
    wrk_rows += [(f"bare reserve {name}", r) for name, r in results.get("bare_reserve", {}).items()]
    wrk_rows += [(f"PostgreSQL row lock {name}", r) for name, r in results.get("pg_baseline", {}).items()]
    if wrk_rows:
        out.append("## wrk\n")
        if booked := results.get("wrk_bookings"):
            verdict = (
                "at least as many, by count" if booked["recorded"] >= booked["answered_201"] else "**fewer: LOST**"
            )
            out.append(
                f"Bookings answered 201 by the service's phases: {booked['answered_201']:,}; rows the record "
                f"gained: {booked['recorded']:,} ({verdict}).\n"
            )
        out.append("| run | req/s | 2xx/s | p50 ms | p95 ms | p99 ms | cores used (the servers, then wrk) | answers |")
        out.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for name, r in wrk_rows:
            answers = ", ".join(f"{k} {v:,}" for k, v in sorted(r["statuses"].items(), key=lambda kv: -kv[1]))
            errors = {k: v for k, v in r["socket_errors"].items() if v}
            if errors:
                answers += f"; socket errors {errors}"
            if r.get("exhausted"):
                answers += " (request file ran out)"
            cpu = ", ".join(f"{label} {used:.2f}" for label, used in r.get("cpu", {}).items()) or "-"
            out.append(
                f"| {name} | {r['rate']:,.0f} | {r['ok_rate']:,.0f} | {r['latency_ms']['p50']:.1f} "
                f"| {_ms(r['latency_ms'].get('p95'))} | {r['latency_ms']['p99']:.1f} | {cpu} | {answers} |"
            )
        out.append("")

    ceiling = results.get("ceiling")
    if ceiling:
        bench = ceiling.get("redis_benchmark_reserve", {})
        piped = ceiling.get("pipelined_hold_reserve", {})
        out.append("## Ceiling: RESERVE straight against Redis\n")
        if "rps" in bench:
            out.append(
                f"- redis-benchmark EVALSHA RESERVE: {bench['rps']:,.0f}/s ({bench['clients']} clients, "
                f"pipeline {bench['pipeline']}, p99 {bench['p99_ms']} ms)"
            )
        else:
            out.append(f"- redis-benchmark: {bench}")
        if piped:
            out.append(f"- pipelined redis-py, HOLD + RESERVE per booking: {piped['bookings_per_s']:,.0f} bookings/s")
        out.append("")

    mem = results.get("memory")
    if mem:
        out.append("## Redis memory\n")
        out.append(
            f"National dataset after the rebuild: {mem['dataset_used_memory'] / MB:,.0f} MB used_memory. "
            + (f"After the run: {mem['after_run_used_memory'] / MB:,.0f} MB." if "after_run_used_memory" in mem else "")
        )
        projection = mem.get("projection", {})
        if projection.get("bytes_per_booking"):
            per = projection["bytes_per_booking"]
            out.append(
                f"\nPer booking: holds {per['holds']} B, idempotency key {per['idempotency']} B (24 h), RQ reminder "
                f"jobs {per['rq_reminders']} B (two, kept until due). A fully booked horizon "
                f"({projection['seats_in_horizon']:,} seats) would need about "
                f"{projection['capacity_redis_full_horizon_bytes'] / MB:,.0f} MB in the capacity Redis and "
                f"{projection['rq_redis_full_horizon_bytes'] / MB:,.0f} MB in RQ's Redis."
            )
        out.append("")

    profile = results.get("profile", {})
    for name, summary in profile.items():
        if not summary.get("samples"):
            continue
        out.append(f"## Profile: where the event loop's time goes ({name}, {summary['samples']:,} samples)\n")
        if summary.get("sqlite_threads"):
            threads = summary["sqlite_threads"]
            out.append(
                f"SQLite connection threads (aiosqlite): {threads['threads']}, inside a SQLite call "
                f"{threads['busy_share'] * 100:.0f}% of the time (running, or waiting for the write lock).\n"
            )
        out.append("| category | share |")
        out.append("| --- | --- |")
        for c in summary["categories"]:
            out.append(f"| {c['category']} | {c['share'] * 100:.1f}% |")
        out.append("")
    return "\n".join(out) + "\n"


def _status(outcome: str) -> int:
    """'POST /api/v1/bookings 409 slot_full' -> 409 (the first 3-digit word after the path)."""
    for word in outcome.split(" ")[2:]:
        if word.isdigit():
            return int(word)
    return -1


def write(results: dict[str, Any], directory: Path, name: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    results["git"] = git_revision()
    results["targets"] = targets(results)
    json_path = directory / f"{name}.json"
    md_path = directory / f"{name}.md"
    json_path.write_text(json.dumps(results, indent=1, ensure_ascii=False, default=str))
    md_path.write_text(markdown(results))
    return json_path, md_path


def _ms(value: float | None) -> str:
    """A latency for a table, "-" when the run did not give it."""
    return "-" if value is None else f"{value:.1f}"
