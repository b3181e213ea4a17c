"""Small helpers for SQL that differs between PostgreSQL and SQLite."""

from __future__ import annotations

from typing import Any

from sqlalchemy import CursorResult, Result, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession


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
