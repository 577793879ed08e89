"""Commands: run the service, load the demo network, rebuild Redis from the record.

python -m app run        # embedded defaults: SQLite + redis-server under var/, demo data
python -m app seed       # load the national demo network into an empty database
python -m app rebuild    # recount every seat in Redis from the bookings table
python -m app staff create|reset-password|disable|enable|unlock --username NAME
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import time

from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from app.capacity.service import Capacity
from app.capacity.watch import RebuildRunning, RebuildTakenOver, rebuild_paused
from app.clock import Clock
from app.db import create_engine, create_schema, session_factory
from app.errors import DomainError
from app.observability import LOG_CONFIG, configure_logging
from app.offices import dataset
from app.offices.models import Office
from app.ratelimit import RateLimiter
from app.redis import connect
from app.settings import Settings, load_settings
from app.staff.demo import ensure_demo_accounts
from app.staff.models import StaffRole, utcnow
from app.staff.service import StaffAuth, StaffPrincipal, audit

log = logging.getLogger("nobat")


async def seed(settings: Settings, *, offices: int, demo_accounts: bool | None = None) -> int:
    """Load the demo network unless the database already has offices; returns offices loaded.
    ``demo_accounts``: also the demo staff, guild and regulator accounts, whose passwords the
    README publishes; by default on the embedded SQLite only (a regulator account, made on a
    staging or production PostgreSQL by mistake, could block any office)."""
    demo_accounts = demo_accounts_wanted(settings, demo_accounts)
    engine = create_engine(settings.database_url, statement_seconds=None)  # an operator's command, watched
    try:
        if settings.database_url.startswith("sqlite"):
            settings.var_dir.mkdir(parents=True, exist_ok=True)
        await create_schema(engine)
        async with session_factory(engine)() as session:
            if await session.scalar(select(func.count()).select_from(Office)):
                return 0
            started = time.perf_counter()
            data = dataset.generate(offices=offices)
            await dataset.load(session, data)
            await session.commit()
            log.info("demo network loaded: %d offices in %.1f s", len(data.offices), time.perf_counter() - started)
            if not demo_accounts:
                log.info("no demo accounts made (not the embedded SQLite; --demo-accounts makes them)")
                return len(data.offices)
            # One staff account for the first office of each province, plus the regulator
            # and the guild, so every page can be tried on a fresh start.
            firsts = sorted({office["code"][:2]: office["code"] for office in reversed(data.offices)}.values())
            accounts = await ensure_demo_accounts(session, _account_maker(settings), firsts)
            await session.commit()
            for username, password, scope in accounts:
                log.info("demo account %s / %s (%s)", username, password, scope)
            return len(data.offices)
    finally:
        await engine.dispose()


def demo_accounts_wanted(settings: Settings, asked: bool | None) -> bool:
    """Whether ``seed`` makes the demo accounts: when asked, else on the embedded SQLite only."""
    return settings.database_url.startswith("sqlite") if asked is None else asked


def _account_maker(settings: Settings) -> StaffAuth:
    # Creating an account only hashes a password and writes a row; the Redis client is never
    # connected (redis-py connects lazily), so the seed works before any Redis runs.
    lazy = Redis()
    return StaffAuth(redis=lazy, settings=settings, limiter=RateLimiter(lazy))


CLI_OPERATOR = StaffPrincipal(account_id=0, username="cli", role=StaffRole.REGULATOR, office_id=None, office_code=None)
"""Who the audit log names for an operator's command."""


async def manage_staff(settings: Settings, args: argparse.Namespace) -> None:
    """Create an account, or reset its password, disable, enable or unlock it: each audited,
    in the same transaction. A refusal (a name taken, a short password) is said, not a traceback."""
    new_password = args.action in ("create", "reset-password")
    password = (args.password or secrets.token_urlsafe(12)) if new_password else None
    engine = create_engine(settings.database_url, statement_seconds=None)  # an operator's command, watched
    staff = _account_maker(settings)
    try:
        async with session_factory(engine)() as session:
            if args.action == "create":
                assert password is not None
                account = await staff.create_account(
                    session=session, username=args.username, password=password, role=args.role, office_code=args.office
                )
                after: dict[str, object] | None = {"role": account.role.value, "office_id": account.office_id}
            else:
                account = await staff.manage(
                    session=session, username=args.username, action=args.action, password=password
                )
                after = {"disabled": account.disabled} if args.action in ("disable", "enable") else None
            await audit(
                session, actor=CLI_OPERATOR, action=f"staff.{args.action}", target=account.username,
                office_id=account.office_id, before=None, after=after, at=utcnow(),
            )  # fmt: skip
            await session.commit()
    except DomainError as error:
        raise SystemExit(error.detail_en) from None
    except IntegrityError:  # the same username made at the same moment by another command
        raise SystemExit("This username is taken.") from None
    finally:
        await engine.dispose()
    print(f"{args.action}: {account.username}")
    if new_password and not args.password:
        print(f"password: {password}")


async def migrate(settings: Settings) -> None:
    engine = create_engine(settings.database_url, statement_seconds=None)  # an operator's command, watched
    try:
        await create_schema(engine)
    finally:
        await engine.dispose()


async def rebuild(settings: Settings) -> int:
    if not settings.redis_url:
        raise SystemExit("rebuild needs REDIS_URL (the embedded Redis is rebuilt by the app at every start)")
    engine = create_engine(settings.database_url, statement_seconds=None)  # an operator's command, watched
    redis = connect(settings.redis_url)
    clock = Clock(settings.tz)
    capacity = Capacity(
        redis, clock=clock, horizon_days=settings.horizon_days, official_holidays=settings.official_holidays
    )
    try:
        wait = settings.rebuild_settle_seconds
        print(
            f"once the recount's lock is taken, bookings pause on every instance and the count starts in {wait:.0f} s"
        )
        try:
            return await rebuild_paused(capacity, session_factory(engine), today=clock.today(), wait=wait)
        except RebuildTakenOver:
            raise SystemExit(
                "this recount stalled past its lock's life and another took it over: that one finishes "
                "the count and resumes bookings. Check that /health/ready answers 200 within a minute."
            ) from None
        except RebuildRunning:
            # A bare traceback had followed "bookings pause", though nothing had paused.
            raise SystemExit(
                "a recount is already under way (an instance's, or the night's): nothing was done. "
                "Try again once /health/ready answers 200."
            ) from None
    finally:
        await capacity.reads.told()  # the instances' copies of the counters are forgotten
        await redis.aclose()
        await engine.dispose()


async def crowd_cap(settings: Settings, args: argparse.Namespace) -> None:
    from app.capacity import crowd_caps
    from app.container import build_container
    from app.regulator.schemas import CrowdCapIn

    if not settings.redis_url:
        raise SystemExit("crowd-cap needs REDIS_URL: the cap must bite in the running service's Redis")
    container = build_container(settings, settings.redis_url, statement_seconds=None)  # an operator's command, watched
    # The regulator's own way, as the API's: a cap that shuts a day ends its lines, each
    # citizen told, and each change is in the audit log under "cli".
    operator = CLI_OPERATOR
    try:
        # Written during a recount, a cap could be counted over by days read before it (the
        # API answers 503 then): nothing is changed.
        if args.action in ("add", "lift") and not await container.capacity.is_built():
            raise SystemExit(
                "the counters are being counted again (a rebuild): nothing changed; try again when it ends"
            )
        async with container.sessions() as session:
            if args.action == "add":
                data = CrowdCapIn(
                    starts_on=args.starts,
                    ends_on=args.ends,
                    percent=args.percent,
                    reason=args.reason,
                    province_code=args.province,
                )
                print(await container.regulator.add_cap(session=session, staff=operator, data=data))
            elif args.action == "lift":
                print(await container.regulator.lift_cap(session=session, staff=operator, cap_id=args.id))
            else:
                for cap in await crowd_caps.list_caps(session=session):
                    print(cap)
    except DomainError as error:  # refused (a cap in force already, a bad date): said, not a traceback
        raise SystemExit(error.detail_en) from None
    finally:
        await container.close()


def main(argv: list[str] | None = None) -> None:
    configure_logging()
    parser = argparse.ArgumentParser(prog="python -m app")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="serve on embedded defaults, loading the demo network first if needed")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8000)
    run.add_argument("--no-seed", action="store_true", help="do not load the demo network")
    seed_cmd = commands.add_parser("seed", help="load the national demo network into an empty database")
    seed_cmd.add_argument("--offices", type=int, default=None)
    seed_cmd.add_argument(
        "--demo-accounts", action="store_true", default=None,
        help="also make the demo accounts (whose passwords the README publishes) outside the embedded SQLite",
    )  # fmt: skip
    commands.add_parser("rebuild", help="recount Redis from the bookings table")
    commands.add_parser("migrate", help="bring the database schema to the latest migration")
    staff_cmd = commands.add_parser(
        "staff", help="create a staff, regulator or guild account, or reset its password, disable, enable or unlock it"
    )
    staff_cmd.add_argument("action", choices=["create", "reset-password", "disable", "enable", "unlock"])
    staff_cmd.add_argument("--username", required=True)
    staff_cmd.add_argument("--role", choices=["office_staff", "regulator", "guild"], default="office_staff")
    staff_cmd.add_argument("--office", default=None, help="office code (office staff only)")
    staff_cmd.add_argument("--password", default=None, help="create, reset-password: omit to generate one and print it")
    cap_cmd = commands.add_parser("crowd-cap", help="cap offices of a province (or all) at a share of their seats")
    cap_actions = cap_cmd.add_subparsers(dest="action", required=True)
    cap_add = cap_actions.add_parser("add")
    cap_add.add_argument("--province", default=None, help="two-digit province code; omit for the whole country")
    cap_add.add_argument("--from", dest="starts", required=True)
    cap_add.add_argument("--to", dest="ends", required=True)
    cap_add.add_argument("--percent", type=int, required=True)
    cap_add.add_argument("--reason", required=True)
    cap_lift = cap_actions.add_parser("lift")
    cap_lift.add_argument("id", type=int)
    cap_actions.add_parser("list")
    args = parser.parse_args(argv)
    settings = load_settings()

    if args.command == "seed":
        loaded = asyncio.run(
            seed(settings, offices=args.offices or settings.demo_offices, demo_accounts=args.demo_accounts)
        )
        print(f"loaded {loaded} offices" if loaded else "the database already has offices; nothing loaded")
    elif args.command == "migrate":
        asyncio.run(migrate(settings))
        print("schema is at the latest migration")
    elif args.command == "rebuild":
        print(f"rebuilt {asyncio.run(rebuild(settings))} office-days")
    elif args.command == "staff":
        asyncio.run(manage_staff(settings, args))
    elif args.command == "crowd-cap":
        asyncio.run(crowd_cap(settings, args))
    elif args.command == "run":
        if args.no_seed:
            pass
        elif settings.database_url.startswith("sqlite"):
            asyncio.run(seed(settings, offices=settings.demo_offices))
        else:
            # The demo's accounts have passwords printed in its log and the README: pointed at
            # an empty production database by mistake, `run` had made them there.
            log.warning("not loading the demo network: DATABASE_URL is not the embedded SQLite (`seed` loads it)")
        serve(settings, host=args.host, port=args.port)


def serve(settings: Settings, *, host: str, port: int) -> None:
    """The web server, two RQ workers (one for messages alone) and the cron scheduler, sharing one
    Redis: the embedded one under var/ when REDIS_URL is unset, stopped with the rest."""
    import os
    import signal
    import subprocess
    import sys

    import uvicorn

    from app.redis import EmbeddedRedis
    from app.serving import CorkedHttpProtocol
    from workers.queues import MESSAGES

    # One key for every process started here: unset, each made up its own, and a sign-in
    # code a worker sent (texted «ورود») was refused by the web process.
    os.environ.setdefault("NOBAT_SECRET_KEY", settings.secret_key)
    embedded = None
    if not settings.redis_url:
        if not settings.database_url.startswith("sqlite"):
            # As the app refuses it (app.main): two hosts running this on one record would
            # each count every seat into a Redis of its own, and sell it once each.
            raise SystemExit("REDIS_URL must be set when DATABASE_URL is not the embedded SQLite")
        embedded = EmbeddedRedis(settings.var_dir / "redis").start()
        os.environ["REDIS_URL"] = embedded.url
        log.info("embedded redis-server on %s", embedded.url)
    if settings.trust_forwarded_for is None and not settings.database_url.startswith("sqlite"):
        # As the app refuses it (app.main), said before the workers and the scheduler start.
        raise SystemExit("NOBAT_TRUST_FORWARDED_FOR must be set when DATABASE_URL is not the embedded SQLite")
    helpers = [
        subprocess.Popen([sys.executable, "-m", "workers.worker"]),
        # A second worker for messages alone, so that sign-in codes never wait for a long job.
        subprocess.Popen([sys.executable, "-m", "workers.worker", "--queues", ",".join(MESSAGES)]),
        subprocess.Popen([sys.executable, "-m", "workers.cron"]),
    ]
    # uvicorn re-raises the signal that stopped it once it has shut down; turned into an
    # exit here, it lets the cleanup below run instead of killing the process outright.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvicorn.run(
            "app.main:app_from_env",
            factory=True,
            host=host,
            port=port,
            log_level="info",
            http=CorkedHttpProtocol,
            log_config=str(LOG_CONFIG),  # the server's own lines too (a worker died) as JSON
        )
    finally:
        for helper in helpers:
            helper.terminate()
        for helper in helpers:
            try:
                helper.wait(timeout=10)
            except subprocess.TimeoutExpired:
                helper.kill()
        if embedded:
            embedded.stop()
