"""Small helpers for SQL that differs between PostgreSQL and SQLite."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import CursorResult, Result, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import asyncpg as postgresql_asyncpg
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler


def upsert(session: AsyncSession, table: Table) -> Any:
    """An INSERT that supports ON CONFLICT on the session's dialect."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE or DELETE touched."""
    assert isinstance(result, CursorResult)
    return int(result.rowcount)


def is_unique_violation(exc: Exception, constraint: str) -> bool:
    """True when a database error is a unique violation of the named index or constraint."""
    return constraint in str(getattr(exc, "orig", exc))


@dataclass(frozen=True)
class DriverStatement:
    """A Core statement compiled once for asyncpg: its SQL ($1, $2, ... with casts) and the
    names of its parameters in that order."""

    sql: str
    names: tuple[str, ...]

    def arguments(self, params: Mapping[str, Any]) -> list[Any]:
        return [params[name] for name in self.names]


_ASYNCPG = postgresql_asyncpg.dialect()  # type: ignore[no-untyped-call]


def for_asyncpg(statement: ClauseElement) -> DriverStatement:
    """Compile `statement` for running on a bare asyncpg connection. Only for values asyncpg
    takes as they are (no SQLAlchemy bind processing runs: pass JSON as text)."""
    compiled = statement.compile(dialect=_ASYNCPG)
    assert isinstance(compiled, SQLCompiler)
    return DriverStatement(compiled.string, tuple(compiled.positiontup or ()))


def is_integrity_error(exc: BaseException) -> bool:
    """A constraint violation (SQLSTATE class 23), from SQLAlchemy or straight from asyncpg."""
    if isinstance(exc, IntegrityError):
        return True
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate.startswith("23")
