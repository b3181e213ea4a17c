"""Migrations: upgrade, downgrade to base, upgrade again, and the schema matches the models."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from birthday_scheduler.infra import migrate
from birthday_scheduler.infra.all_models import Base
from birthday_scheduler.infra.db import create_engine
from birthday_scheduler.settings import Settings
from support import drop_database, pg_admin, pg_url

TABLES = {
    "users",
    "message_schedules",
    "message_logs",
    "scheduler_heartbeats",
    "started_occasions",
}


@pytest.fixture(params=["postgresql", "sqlite"])
async def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.sqlite3'}"
        return
    name = f"bs_mig_{uuid.uuid4().hex[:10]}"
    await pg_admin(f'CREATE DATABASE "{name}"')
    yield pg_url(name)
    await drop_database(name)


def _tables(connection) -> set[str]:  # type: ignore[no-untyped-def]
    return set(inspect(connection).get_table_names()) - {"alembic_version"}


def _diff(connection) -> list:  # type: ignore[no-untyped-def]
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return compare_metadata(context, Base.metadata)


async def test_upgrade_downgrade_upgrade(empty_database_url: str) -> None:
    engine = create_engine(Settings(), empty_database_url)
    try:
        await migrate.upgrade(engine)
        async with engine.connect() as conn:
            assert await conn.run_sync(_tables) == TABLES
            assert await conn.run_sync(_diff) == []
        assert (await migrate.schema_status(engine)).up_to_date

        await migrate.downgrade(engine, "0001")
        async with engine.connect() as conn:
            assert await conn.run_sync(_tables) == {"users"}
        assert not (await migrate.schema_status(engine)).up_to_date

        await migrate.downgrade(engine, "base")
        async with engine.connect() as conn:
            assert await conn.run_sync(_tables) == set()
        assert await migrate.current_revision(engine) is None

        await migrate.upgrade(engine)
        async with engine.connect() as conn:
            assert await conn.run_sync(_tables) == TABLES
            assert await conn.run_sync(_diff) == []
        assert await migrate.current_revision(engine) == migrate.head_revision()
    finally:
        await engine.dispose()
