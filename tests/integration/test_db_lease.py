"""The connection lease of the one-statement hot paths (infra/db_lease.py), on real PostgreSQL:
bounded, fair to waiters, given back when idle, and never handing out a dead or half-used
connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from birthday_scheduler.entrypoints import runtime
from birthday_scheduler.infra.db import create_engine, driver_connection
from birthday_scheduler.infra.db_lease import ConnectionLease, lease_of
from birthday_scheduler.settings import Settings
from support import FakeClock, eventually, pg_admin

pytestmark = pytest.mark.postgres


@pytest.fixture
async def engine(pg_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(Settings(database_pool_max=6), pg_database_url)
    yield engine
    await engine.dispose()


def checked_out(engine: AsyncEngine) -> int:
    return int(engine.sync_engine.pool.checkedout())  # type: ignore[attr-defined]


async def test_many_requests_share_at_most_limit_connections(engine: AsyncEngine) -> None:
    lease = ConnectionLease.open(engine, limit=3)
    pids: set[int] = set()
    most = 0

    async def request() -> None:
        nonlocal most
        async with driver_connection(engine) as conn:
            most = max(most, checked_out(engine))
            pids.add(await conn.fetchval("SELECT pg_backend_pid()"))

    await asyncio.gather(*(request() for _ in range(40)))
    assert most == 3
    assert len(pids) == 3
    assert lease.held == 3
    await lease.close()
    assert lease_of(engine) is None
    await eventually(lambda: checked_out(engine) == 0)


async def test_idle_connections_go_back_to_the_pool(engine: AsyncEngine) -> None:
    lease = ConnectionLease.open(engine, limit=3, idle_s=0.05)
    async with driver_connection(engine) as conn:
        await conn.fetchval("SELECT 1")
    assert (lease.held, lease.idle, checked_out(engine)) == (1, 1, 1)
    await eventually(lambda: checked_out(engine) == 0 and lease.held == 0)
    assert lease.idle == 0
    await lease.close()


async def test_a_connection_the_server_ended_is_replaced_not_handed_out(
    engine: AsyncEngine, pg_database_url: str
) -> None:
    lease = ConnectionLease.open(engine, limit=2)
    async with driver_connection(engine) as conn:
        first = await conn.fetchval("SELECT pg_backend_pid()")
        driver = conn
    await pg_admin(f"SELECT pg_terminate_backend({first})")
    await eventually(driver.is_closed)
    async with driver_connection(engine) as conn:
        second = await conn.fetchval("SELECT pg_backend_pid()")
    assert second != first
    assert lease.held == 1
    await lease.close()


async def test_an_error_the_server_reported_keeps_the_connection(engine: AsyncEngine) -> None:
    lease = ConnectionLease.open(engine, limit=2)
    pids = []

    async def divide_by_zero() -> None:
        async with driver_connection(engine) as conn:
            pids.append(await conn.fetchval("SELECT pg_backend_pid()"))
            await conn.fetchval("SELECT 1 / 0")

    with pytest.raises(asyncpg.DivisionByZeroError):
        await divide_by_zero()
    first = pids[0]
    async with driver_connection(engine) as conn:
        assert await conn.fetchval("SELECT pg_backend_pid()") == first
    await lease.close()


async def test_a_statement_cut_short_drops_its_connection(engine: AsyncEngine) -> None:
    lease = ConnectionLease.open(engine, limit=2)

    async def slow() -> None:
        async with driver_connection(engine) as conn:
            await conn.fetchval("SELECT pg_sleep(30)")

    task = asyncio.create_task(slow())
    await eventually(lambda: checked_out(engine) == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # In no known state: closed, its pool slot free, nothing parked.
    assert (lease.held, lease.idle, checked_out(engine)) == (0, 0, 0)
    async with driver_connection(engine) as conn:
        assert await conn.fetchval("SELECT 1") == 1
    await lease.close()


async def test_a_cancelled_waiter_loses_no_connection(engine: AsyncEngine) -> None:
    lease = ConnectionLease.open(engine, limit=1)
    release = asyncio.Event()

    async def holder() -> None:
        async with driver_connection(engine):
            await release.wait()

    async def waiter() -> None:
        async with driver_connection(engine):
            pass

    holding = asyncio.create_task(holder())
    await eventually(lambda: lease.held == 1)
    waiting = asyncio.create_task(waiter())
    await eventually(lambda: lease.waiting == 1)
    waiting.cancel()
    release.set()
    await holding
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert (lease.held, lease.idle) == (1, 1)
    async with asyncio.timeout(5), driver_connection(engine) as conn:
        assert await conn.fetchval("SELECT 1") == 1
    await lease.close()


async def test_the_rest_of_the_service_keeps_two_connections(pg_database_url: str) -> None:
    settings = Settings(database_url=pg_database_url, database_pool_max=4)
    async with runtime.open_resources(settings, broker=None, clock=FakeClock()) as resources:
        engine = resources.engine
        lease = lease_of(engine)
        assert lease is not None
        assert lease.limit == 2
        release = asyncio.Event()

        async def hot() -> None:
            async with driver_connection(engine):
                await release.wait()

        busy = [asyncio.create_task(hot()) for _ in range(5)]
        await eventually(lambda: lease.held == 2)
        # The pool's other two connections answer at once, however long the hot queue.
        async with asyncio.timeout(5), engine.connect() as one, engine.connect() as two:
            assert (await one.execute(text("SELECT 1"))).scalar() == 1
            assert (await two.execute(text("SELECT 2"))).scalar() == 2
        release.set()
        await asyncio.gather(*busy)
    assert lease_of(engine) is None


async def test_a_parked_connection_the_server_ended_still_frees_its_slot(
    engine: AsyncEngine,
) -> None:
    lease = ConnectionLease.open(engine, limit=2, idle_s=0.05)
    async with driver_connection(engine) as conn:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        driver = conn
    await pg_admin(f"SELECT pg_terminate_backend({pid})")
    await eventually(driver.is_closed)
    # Given back to the pool when idle, dead or not: the slot is free and the pool serves.
    await eventually(lambda: checked_out(engine) == 0 and lease.held == 0)
    async with engine.connect() as other:
        assert (await other.execute(text("SELECT 1"))).scalar() == 1
    await lease.close()
