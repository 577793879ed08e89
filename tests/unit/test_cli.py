"""The command line's choices that are not the services' own."""

from __future__ import annotations

from typing import Any

import pytest

from app import cli


@pytest.mark.parametrize(
    ("database_url", "seeded"),
    [("", True), ("postgresql+asyncpg://nobat@db.example/nobat", False)],
)
def test_run_loads_the_demo_network_only_into_the_embedded_database(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, database_url: str, seeded: bool
) -> None:
    """The demo's accounts have their passwords in its log and the README: `run` pointed at a
    production database by mistake had made them there."""
    for name, value in {
        "DATABASE_URL": database_url,
        "NOBAT_VAR_DIR": str(tmp_path),
        "NOBAT_SECRET_KEY": "k" * 32,
        "NOBAT_SMS_BACKEND": "console",
    }.items():
        monkeypatch.setenv(name, value)
    seeds: list[str] = []
    served: list[str] = []

    async def seed(settings: Any, *, offices: int) -> int:
        seeds.append(settings.database_url)
        return 0

    monkeypatch.setattr(cli, "configure_logging", lambda: None)  # the tests' own logging kept
    monkeypatch.setattr(cli, "seed", seed)
    monkeypatch.setattr(cli, "serve", lambda settings, *, host, port: served.append(host))
    cli.main(["run"])
    assert (len(seeds), served) == (int(seeded), ["127.0.0.1"])


def test_run_on_a_shared_record_without_redis_url_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """Two hosts running `run` on one PostgreSQL each counted every seat into a Redis of its
    own, and sold it once each. Refused before any Redis, worker or server is started."""
    from app.settings import load_settings

    settings = load_settings(
        {
            "DATABASE_URL": "postgresql+asyncpg://nobat@db.example/nobat",
            "NOBAT_VAR_DIR": str(tmp_path),
            "NOBAT_SECRET_KEY": "k" * 32,
            "NOBAT_SMS_BACKEND": "console",
        }
    )
    with pytest.raises(SystemExit, match="REDIS_URL must be set"):
        cli.serve(settings, host="127.0.0.1", port=0)
    assert not (tmp_path / "redis").exists()


def test_run_on_a_shared_record_must_say_whether_behind_a_proxy(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """As the web refuses it at its start, said before any worker or the scheduler starts."""
    import subprocess

    from app.settings import load_settings

    started: list[Any] = []
    monkeypatch.setattr(subprocess, "Popen", lambda *args, **kwargs: started.append(args))
    settings = load_settings(
        {
            "DATABASE_URL": "postgresql+asyncpg://nobat@db.example/nobat",
            "REDIS_URL": "redis://127.0.0.1:9/0",
            "NOBAT_VAR_DIR": str(tmp_path),
            "NOBAT_SECRET_KEY": "k" * 32,
            "NOBAT_SMS_BACKEND": "console",
        }
    )
    with pytest.raises(SystemExit, match="NOBAT_TRUST_FORWARDED_FOR must be set"):
        cli.serve(settings, host="127.0.0.1", port=0)
    assert started == []
