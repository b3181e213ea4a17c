"""The idle probe must say yes whenever the tick's claim or sweep would find a row: a no there
would leave a due message unplanned or a lost one unswept until something else came due."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from birthday_scheduler.infra.db import create_engine, session_factory, unit_of_work
from birthday_scheduler.messages import idle_probe, schedules
from birthday_scheduler.messages.ledger import publishing
from birthday_scheduler.messages.models import MessageStatus
from birthday_scheduler.settings import Settings

pytestmark = pytest.mark.postgres

NOW = datetime(2026, 6, 15, 9, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)


@pytest.fixture
async def engine(pg_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(Settings(), pg_database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def conn(pg_database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(pg_database_url)
    yield connection
    await connection.close()


async def add_user(conn: asyncpg.Connection) -> uuid.UUID:
    user_id = uuid.uuid4()
    await conn.execute(
        """INSERT INTO users (id, first_name, last_name, email, date_of_birth,
                              timezone_offset_minutes, created_at, updated_at)
           VALUES ($1, 'Probe', 'User', $2, date '1990-06-15', 0, $3, $3)""",
        user_id,
        f"probe-{user_id.hex}@example.com",
        NOW - timedelta(days=100),
    )
    return user_id


async def add_schedule(conn: asyncpg.Connection, fires_at: datetime) -> None:
    await conn.execute(
        "INSERT INTO message_schedules (user_id, kind, next_fire_at, occasion_date)"
        " VALUES ($1, 'birthday', $2, $3)",
        await add_user(conn),
        fires_at,
        fires_at.date(),
    )


async def add_row(conn: asyncpg.Connection, status: str, lease_until: datetime | None) -> None:
    row_id = uuid.uuid4()
    await conn.execute(
        """INSERT INTO message_logs (id, user_id, kind, occasion_date, idempotency_key, status,
                                     attempts, scheduled_at, not_before, lease_until,
                                     created_at, updated_at)
           VALUES ($1, $2, 'birthday', $3, $4, $5, 0, $6, $6, $7, $6, $6)""",
        row_id,
        await add_user(conn),
        date(2026, 6, 15),
        str(row_id),
        status,
        NOW - timedelta(hours=1),
        lease_until,
    )


async def tick_would_find(engine: AsyncEngine, now: datetime) -> bool:
    """What the tick's own reads find at `now`: a due schedule or a stale row."""
    async with unit_of_work(session_factory(engine)) as session:
        due = await schedules.claim_due_schedules(session, now, 10)
        stale = await publishing.lock_stale(session, now, 10)
    return bool(due or stale)


async def test_nothing_at_all_is_nothing_to_do(engine: AsyncEngine) -> None:
    assert not await idle_probe.anything_to_do(engine, NOW)


async def test_a_schedule_is_something_to_do_from_its_instant_on(
    engine: AsyncEngine, conn: asyncpg.Connection
) -> None:
    await add_schedule(conn, NOW)
    for at in (NOW - SECOND, NOW, NOW + SECOND):
        assert await idle_probe.anything_to_do(engine, at) == await tick_would_find(engine, at)
    assert not await idle_probe.anything_to_do(engine, NOW - SECOND)
    assert await idle_probe.anything_to_do(engine, NOW)


@pytest.mark.parametrize("status", list(MessageStatus))
async def test_a_row_is_something_to_do_exactly_when_the_sweep_would_lock_it(
    engine: AsyncEngine, conn: asyncpg.Connection, status: MessageStatus
) -> None:
    await add_row(conn, status.value, NOW)
    for at in (NOW - SECOND, NOW, NOW + SECOND):
        assert await idle_probe.anything_to_do(engine, at) == await tick_would_find(engine, at)
    await add_row(conn, status.value, None)  # no lease: never swept
    assert not await idle_probe.anything_to_do(engine, NOW - SECOND)
