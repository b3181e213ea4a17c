"""Fixtures: real PostgreSQL databases cloned from a migrated template, SQLite files, the app."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from birthday_scheduler.api.app import create_app
from birthday_scheduler.entrypoints import runtime
from birthday_scheduler.infra import migrate
from birthday_scheduler.infra.broker.memory import MemoryBroker
from birthday_scheduler.infra.db import create_engine
from birthday_scheduler.settings import Settings
from support import FakeClock, drop_database, pg_admin, pg_url

RUN_ID = f"bs_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="session")
async def pg_template() -> AsyncIterator[str]:
    """One migrated PostgreSQL database per test run; tests get fast copies of it."""
    name = f"{RUN_ID}_tpl"
    await pg_admin(f'CREATE DATABASE "{name}"')
    engine = create_engine(Settings(), pg_url(name))
    await migrate.upgrade(engine)
    await engine.dispose()
    yield name
    await drop_database(name)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import asyncio

    path = tmp_path_factory.mktemp("sqlite") / "template.sqlite3"

    async def build() -> None:
        engine = create_engine(Settings(), f"sqlite:///{path}")
        await migrate.upgrade(engine)
        await engine.dispose()

    asyncio.run(build())
    return path


@pytest.fixture
async def pg_database_url(pg_template: str) -> AsyncIterator[str]:
    name = f"{RUN_ID}_{uuid.uuid4().hex[:8]}"
    await pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    yield pg_url(name)
    await drop_database(name)


@pytest.fixture
def sqlite_database_url(sqlite_template: Path, tmp_path: Path) -> str:
    target = tmp_path / "db.sqlite3"
    shutil.copy(sqlite_template, target)
    return f"sqlite:///{target}"


@pytest.fixture(params=["postgresql", "sqlite"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Runs the test once on real PostgreSQL and once on the embedded SQLite."""
    fixture = "pg_database_url" if request.param == "postgresql" else "sqlite_database_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, rate_limit_per_minute=0)


@pytest.fixture
async def resources(settings: Settings, clock: FakeClock) -> AsyncIterator[runtime.Resources]:
    async with runtime.open_resources(settings, broker=MemoryBroker(), clock=clock) as opened:
        yield opened


@pytest.fixture
def engine(resources: runtime.Resources) -> AsyncEngine:
    return resources.engine


@pytest.fixture
async def client(resources: runtime.Resources) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(runtime.api_context(resources))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http
