"""Engine, sessions and the unit of work. Created at start-up, passed down, closed at shutdown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

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
    # Pre-ping replaces connections a restart killed before a request gets them.
    return create_async_engine(
        target,
        pool_size=settings.database_pool_max,
        max_overflow=0,
        pool_pre_ping=True,
        pool_timeout=10,
        # asyncpg caches prepared statements per connection; keep them for the hot queries.
        connect_args={
            "server_settings": {"application_name": "birthday-scheduler"},
            "timeout": 5,
            "command_timeout": 300,
        },
    )


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
