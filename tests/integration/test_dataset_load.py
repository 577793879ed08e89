import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from app.capacity.models import CapacityTemplate
from app.db import Base
from app.offices.dataset import generate, load, slice_of
from app.offices.models import City, Office, OfficeKind, OfficeService, Province, Service

TABLES = [
    Base.metadata.tables[m.__tablename__] for m in (Province, City, Service, Office, OfficeService, CapacityTemplate)
]


def _foreign_keys_on(dbapi_connection: Any, _record: Any) -> None:
    # SQLite ignores foreign keys unless asked; with them on, a load in the wrong order fails.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


async def _engine(path: Path) -> AsyncEngine:
    engine = create_async_engine("sqlite+aiosqlite:///" + str(path))
    event.listen(engine.sync_engine, "connect", _foreign_keys_on)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all, tables=TABLES)
    return engine


async def _count(session: AsyncSession, model: type[Any]) -> int:
    return (await session.execute(select(func.count()).select_from(model))).scalar_one()


@pytest.mark.slow
@pytest.mark.asyncio
async def test_full_dataset_loads_into_sqlite(tmp_path: Path) -> None:
    dataset = generate()
    engine = await _engine(tmp_path / "nobat.db")
    try:
        started = time.perf_counter()
        async with AsyncSession(engine) as session:
            await load(session, dataset)
            await session.commit()
        elapsed = time.perf_counter() - started
        assert elapsed < 60, f"loading took {elapsed:.1f} s"

        async with AsyncSession(engine) as session:
            assert await _count(session, Province) == 31
            assert await _count(session, City) == len(dataset.cities)
            assert await _count(session, Service) == len(dataset.services)
            assert await _count(session, Office) == 17_000
            assert await _count(session, OfficeService) == len(dataset.office_services)
            assert await _count(session, CapacityTemplate) == 17_000
            rural = await session.scalar(
                select(func.count()).select_from(Office).where(Office.kind == OfficeKind.RURAL_ICT)
            )
            assert rural == sum(1 for o in dataset.offices if o["kind"] is OfficeKind.RURAL_ICT)
            # Rows come back as the models see them: enums, relationships, the template text.
            office = await session.scalar(select(Office).where(Office.code == "010001"))
            assert office is not None
            assert office.kind is OfficeKind.COUNTER
            assert office.city.name_en == "Tehran"
            template = await session.get(CapacityTemplate, office.id)
            assert template is not None and template.template == dataset.templates["010001"]
    finally:
        await engine.dispose()


@pytest.mark.asyncio
async def test_slice_loads_with_foreign_keys_enforced(tmp_path: Path) -> None:
    part = slice_of(generate(offices=2_000), provinces=2, offices=40)
    engine = await _engine(tmp_path / "slice.db")
    try:
        async with AsyncSession(engine) as session:
            await load(session, part)
            await session.commit()
        async with AsyncSession(engine) as session:
            assert await _count(session, Office) == 40
            assert await _count(session, City) == len(part.cities)
    finally:
        await engine.dispose()
