"""Engine, sessions and the unit of work. Created at start-up, passed down, closed at shutdown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.util import greenlet_spawn

from birthday_scheduler.infra.db_faults import is_unavailable
from birthday_scheduler.infra.db_lease import lease_of
from birthday_scheduler.settings import Settings

SQLITE_BUSY_TIMEOUT_MS = 5_000


def async_url(url: str) -> str:
    """Map the operator-facing URL (postgresql://, sqlite:///) to its asyncio driver."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    elif parsed.drivername == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    return parsed.render_as_string(hide_password=False)


def create_engine(settings: Settings, url: str | None = None) -> AsyncEngine:
    database_url = url or settings.effective_database_url
    target = async_url(database_url)
    if target.startswith("sqlite"):
        return _sqlite_engine(target)
    # Every wait on the database is bounded, so an unreachable server is an error in seconds,
    # never a hang: connecting (refused at once; black-holed: `timeout`), waiting for a pooled
    # connection (`pool_timeout`, long enough for a busy worker) and each statement
    # (`command_timeout`: the backstop for a connection that went silent under a scheduler or
    # worker, as long as the runbook's "end queries older than 5 minutes"; SQLAlchemy then
    # discards that connection). The API bounds its requests far tighter (users/routes.py).
    # No pool_pre_ping: it cost three round trips a checkout (BEGIN, ping, ROLLBACK). A
    # connection a restart killed is replaced for free at checkout when its driver has seen it
    # close (below), and a read that still meets one runs again on a fresh connection
    # (db_faults.retry_stale).
    engine = create_async_engine(
        target,
        pool_size=settings.database_pool_max,
        max_overflow=0,
        pool_timeout=10,
        # asyncpg caches prepared statements per connection; keep them for the hot queries.
        connect_args={
            "server_settings": {"application_name": "birthday-scheduler"},
            "timeout": 5,
            "command_timeout": 300,
        },
    )
    event.listen(engine.sync_engine, "checkout", _replace_closed)
    return engine


def _replace_closed(_dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
    """A local, free check in place of a ping: when the server ended this connection (a
    restart, pg_terminate_backend), asyncpg has already marked it closed; DisconnectionError
    makes the pool open a new one in its place before anyone gets it."""
    driver = record.driver_connection
    if driver is not None and driver.is_closed():
        raise DisconnectionError("pooled connection closed by the server")


def _sqlite_engine(target: str) -> AsyncEngine:
    database = make_url(target).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(target, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        # WAL lets the API read while the scheduler writes; the busy timeout waits out short locks.
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()
        # pysqlite emits no BEGIN of its own (it begins lazily, before the first write), so a
        # SAVEPOINT would open the transaction and its RELEASE commit it: a user committed
        # without its plan. Turn that off and begin explicitly, below.
        dbapi_connection.isolation_level = None

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        # IMMEDIATE takes the write lock up front: two transactions that read and then write
        # queue on the busy timeout instead of failing on a stale snapshot, and a tick's read
        # of due schedules cannot be overtaken by an edit before its own writes.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


@asynccontextmanager
async def unit_of_work(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One transaction: commits when the block ends, rolls back when it raises."""
    async with sessions() as session, session.begin():
        yield session


@asynccontextmanager
async def driver_connection(engine: AsyncEngine) -> AsyncIterator[Any]:
    """A pooled connection's own asyncpg connection, for the API's hot statements: no
    SQLAlchemy in between and no transaction around it (one statement is its own transaction;
    the pool's reset on return is then a no-op, not a ROLLBACK).

    The connection goes back to the pool unless something other than an ordinary SQL error
    (a constraint, say) interrupted it: cancelled mid-statement, it is in no known state. A
    dead connection also invalidates the pool, as SQLAlchemy does on a disconnect, so the
    other connections from before a restart are replaced at their next checkout."""
    lease = lease_of(engine)
    if lease is not None:
        leased = await lease.acquire()
        try:
            yield leased.driver_connection
        except BaseException as exc:
            if isinstance(getattr(exc, "sqlstate", None), str) and not is_unavailable(exc):
                lease.release(leased)
            else:
                await lease.drop(leased, exc)
            raise
        lease.release(leased)
        return
    pooled = await engine.raw_connection()
    try:
        yield pooled.driver_connection
    except BaseException as exc:
        # An error the server reported (it has a SQLSTATE) leaves the connection usable.
        reported = isinstance(getattr(exc, "sqlstate", None), str)
        if reported and not is_unavailable(exc):
            await greenlet_spawn(pooled.close)
        else:
            if is_unavailable(exc):
                # What SQLAlchemy does on a disconnect (a private method, its own).
                engine.sync_engine.pool._invalidate(pooled, exc, _checkin=False)
            await greenlet_spawn(pooled.invalidate, exc)  # closes it and frees its pool slot
        raise
    await greenlet_spawn(pooled.close)


async def warm_pool(engine: AsyncEngine, connections: int) -> None:
    """Open DATABASE_POOL_MIN connections up front so the first requests do not pay for them."""
    held = []
    try:
        for _ in range(connections):
            conn = await engine.connect()
            held.append(conn)
            await conn.execute(text("SELECT 1"))
    finally:
        for conn in held:
            await conn.close()


def pool_status(engine: AsyncEngine) -> tuple[int, int]:
    """(size, checked out) of the connection pool, for metrics."""
    pool = engine.sync_engine.pool
    size = getattr(pool, "size", lambda: 0)()
    checked_out = getattr(pool, "checkedout", lambda: 0)()
    return int(size), int(checked_out)
