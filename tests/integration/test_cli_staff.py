"""The operator's staff commands (python -m app staff ...) against a real record: each change
audited, each refusal said without a traceback, and demo accounts made only when asked."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from app import cli
from app.db import create_engine, session_factory
from app.settings import load_settings
from app.staff.models import AuditEntry, StaffAccount


@pytest.fixture
def record(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    for name, value in {
        "DATABASE_URL": url,
        "NOBAT_VAR_DIR": str(tmp_path),
        "NOBAT_SECRET_KEY": "k" * 32,
        "NOBAT_SMS_BACKEND": "console",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(cli, "configure_logging", lambda: None)  # the tests' own logging kept
    cli.main(["migrate"])
    return url


def rows(url: str, query: Any) -> list[Any]:
    async def read() -> list[Any]:
        engine = create_engine(url, statement_seconds=None)
        try:
            async with session_factory(engine)() as session:
                return list((await session.execute(query)).all())
        finally:
            await engine.dispose()

    return asyncio.run(read())


def test_an_operator_resets_disables_and_unlocks_an_account_each_audited(
    record: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cli.main(["staff", "create", "--username", "reg-one", "--role", "regulator", "--password", "first-secret-1"])
    with pytest.raises(SystemExit, match="This username is taken"):
        cli.main(["staff", "create", "--username", "reg-one", "--role", "regulator", "--password", "x" * 12])
    with pytest.raises(SystemExit, match="at least 10 characters"):
        cli.main(["staff", "reset-password", "--username", "reg-one", "--password", "short"])
    with pytest.raises(SystemExit, match="No account has this username"):
        cli.main(["staff", "disable", "--username", "nobody-here"])
    capsys.readouterr()
    cli.main(["staff", "reset-password", "--username", "reg-one"])
    printed = capsys.readouterr().out
    assert "reset-password: reg-one" in printed and "password: " in printed  # generated, shown once
    cli.main(["staff", "disable", "--username", "reg-one"])
    [(disabled, failed)] = rows(record, select(StaffAccount.disabled, StaffAccount.failed_attempts))
    assert disabled and failed == 0
    cli.main(["staff", "enable", "--username", "reg-one"])
    cli.main(["staff", "unlock", "--username", "reg-one"])
    audited = rows(record, select(AuditEntry.actor, AuditEntry.action, AuditEntry.target).order_by(AuditEntry.id))
    assert audited == [
        ("cli", f"staff.{action}", "reg-one") for action in ("create", "reset-password", "disable", "enable", "unlock")
    ]


def test_seed_makes_the_demo_accounts_only_when_asked_outside_the_embedded_database(record: str) -> None:
    """Their passwords are in the README: a regulator account made on a staging or production
    database by mistake could block any office. On SQLite (the embedded demo) they are made;
    elsewhere only with --demo-accounts (the load test's stack)."""
    settings = load_settings()
    assert asyncio.run(cli.seed(settings, offices=200, demo_accounts=False)) == 200
    assert rows(record, select(StaffAccount.username)) == []


def test_seed_on_the_embedded_database_makes_the_demo_accounts_by_default(record: str) -> None:
    cli.main(["seed", "--offices", "200"])
    names = {name for (name,) in rows(record, select(StaffAccount.username))}
    assert {"regulator", "guild", "staff-010001"} <= names


def test_seed_elsewhere_makes_no_demo_accounts_unless_asked(record: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default read off the database's address: a PostgreSQL one makes none."""
    made: list[bool] = []

    async def fake_seed(settings: Any, *, offices: int, demo_accounts: bool | None = None) -> int:
        made.append(cli.demo_accounts_wanted(settings, demo_accounts))
        return 0

    monkeypatch.setattr(cli, "seed", fake_seed)
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://nobat@db.example/nobat")
    monkeypatch.setenv("NOBAT_SECRET_KEY", "k" * 32)
    cli.main(["seed"])
    cli.main(["seed", "--demo-accounts"])
    assert made == [False, True]
