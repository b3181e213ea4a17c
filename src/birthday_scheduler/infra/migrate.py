"""Schema migrations (Alembic) driven over the application's own async engine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision in the migration files (reads and parses every one of them)."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: command.upgrade(alembic_config(c), revision))


async def downgrade(engine: AsyncEngine, revision: str = "-1") -> None:
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: command.downgrade(alembic_config(c), revision))


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current)


@dataclass(frozen=True)
class SchemaStatus:
    current: str | None
    head: str

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


async def schema_status(engine: AsyncEngine) -> SchemaStatus:
    return SchemaStatus(current=await current_revision(engine), head=head_revision())


_VERSIONS = text("SELECT version_num FROM alembic_version")


async def database_revision(engine: AsyncEngine) -> str | None:
    """The database's revision in one query, for a readiness probe: no migration files read
    (compare with a `head_revision()` read once at start-up) and no catalog lookup, so a
    database without the version table raises instead of answering None."""
    async with engine.connect() as conn:
        rows = (await conn.execute(_VERSIONS)).scalars().all()
    return ",".join(sorted(rows)) or None
