"""SQL for users. Soft deletes: a deleted user keeps its message history."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, cast

import orjson
from sqlalchemy import (
    Date,
    DateTime,
    Integer,
    Select,
    String,
    Table,
    bindparam,
    func,
    insert,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from birthday_scheduler.errors import ConflictError, FieldProblem
from birthday_scheduler.infra import sql
from birthday_scheduler.infra.db import driver_connection
from birthday_scheduler.infra.db_faults import always, is_unavailable, retry_stale
from birthday_scheduler.infra.logging import get_logger
from birthday_scheduler.infra.sql import is_unique_violation, rowcount
from birthday_scheduler.messages.models import MessageSchedule
from birthday_scheduler.users.models import User

EMAIL_INDEX = "ux_users_email_live"
log = get_logger(__name__)


def _email_conflict(exc: Exception) -> ConflictError:
    if is_unique_violation(exc, EMAIL_INDEX):
        return ConflictError(
            "A live user already has this email address.",
            [FieldProblem("email", "already in use (compared case-insensitively)")],
        )
    raise exc


async def insert_user(session: AsyncSession, values: dict[str, Any]) -> None:
    try:
        async with session.begin_nested():
            await session.execute(insert(User).values(values))
    except IntegrityError as exc:
        raise _email_conflict(exc) from None


async def get_live(session: AsyncSession, user_id: uuid.UUID, *, lock: bool = False) -> User | None:
    stmt = select(User).where(User.id == user_id, User.deleted_at.is_(None))
    if lock:
        # FOR NO KEY UPDATE: a tick inserting this user's ledger rows takes FOR KEY SHARE (the
        # foreign key) while it holds the schedules a re-plan waits for; FOR UPDATE would
        # deadlock with it.
        stmt = stmt.with_for_update(key_share=True)
    return (await session.execute(stmt)).scalar_one_or_none()


async def update_user(session: AsyncSession, user_id: uuid.UUID, values: dict[str, Any]) -> None:
    try:
        async with session.begin_nested():
            await session.execute(update(User).where(User.id == user_id).values(values))
    except IntegrityError as exc:
        raise _email_conflict(exc) from None


async def soft_delete(session: AsyncSession, user_id: uuid.UUID, now: datetime) -> bool:
    result = await session.execute(
        update(User)
        .where(User.id == user_id, User.deleted_at.is_(None))
        .values(deleted_at=now, updated_at=now)
    )
    return bool(rowcount(result))


async def page(
    session: AsyncSession, limit: int, after: tuple[datetime, uuid.UUID] | None
) -> list[User]:
    """Live users in creation order, keyset-paginated on (created_at, id)."""
    stmt = select(User).where(User.deleted_at.is_(None))
    if after is not None:
        stmt = stmt.where(tuple_(User.created_at, User.id) > tuple_(*after))
    stmt = stmt.order_by(User.created_at, User.id).limit(limit)
    return list((await session.execute(stmt)).scalars())


# The API's hot statements: built once (building a statement and its cache key per request
# cost more than running it) and, on PostgreSQL, compiled once for asyncpg and run on the bare
# driver connection (infra/db.driver_connection): no unit of work, no ORM, one round trip.
_users = cast(Table, User.__table__)
_schedules = cast(Table, MessageSchedule.__table__)
_u, _s = _users.c, _schedules.c

# What a user's response is made of: its columns, then one planned (kind, instant) per row.
USER_COLUMNS = (
    _u.id,
    _u.first_name,
    _u.last_name,
    _u.email,
    _u.date_of_birth,
    _u.timezone,
    _u.timezone_offset_minutes,
    _u.anniversary_date,
    _u.send_local_time,
    _u.notifications,
    _u.created_at,
    _u.updated_at,
)
_PLANNED = len(USER_COLUMNS)  # index of the kind; the instant follows


def _user_with_plan_statement() -> Select[Any]:
    """One live user and its planned messages, earliest first: a row per schedule (a user has
    one per kind at most), or one row with a NULL kind when nothing is planned."""
    return (
        select(*USER_COLUMNS, _s.kind, _s.next_fire_at)
        .select_from(_users.outerjoin(_schedules, _s.user_id == _u.id))
        .where(_u.id == bindparam("user_id", type_=_u.id.type), _u.deleted_at.is_(None))
        .order_by(_s.next_fire_at, _s.kind)
    )


def _page_with_plans_statement(*, after: bool) -> Select[Any]:
    """A page of live users in creation order (keyset on (created_at, id)), each with its
    planned messages, in one statement."""
    page = select(*USER_COLUMNS).where(_u.deleted_at.is_(None))
    if after:
        position = tuple_(
            bindparam("after_at", type_=_u.created_at.type),
            bindparam("after_id", type_=_u.id.type),
        )
        page = page.where(tuple_(_u.created_at, _u.id) > position)
    users = (
        page.order_by(_u.created_at, _u.id).limit(bindparam("limit", type_=Integer())).subquery()
    )
    return (
        select(*users.c, _s.kind, _s.next_fire_at)
        .select_from(users.outerjoin(_schedules, _s.user_id == users.c.id))
        .order_by(users.c.created_at, users.c.id, _s.next_fire_at, _s.kind)
    )


def _create_statement(*, one_kind: bool) -> Any:
    """PostgreSQL: a new user and its whole plan in one statement (so one transaction and one
    round trip). The plan comes as three parallel arrays, or, for the common plan of one kind,
    as three values: measured, that saves a quarter of the statement's client CPU (array
    encoding) and the server's unnest."""
    new_user = (
        insert(_users)
        .values({column.name: bindparam(column.name, type_=column.type) for column in USER_COLUMNS})
        .returning(_u.id)
        .cte("new_user")
    )
    if one_kind:
        source = select(
            new_user.c.id,
            bindparam("kind", type_=String()),
            bindparam("next_fire_at", type_=DateTime(timezone=True)),
            bindparam("occasion_date", type_=Date()),
        )
    else:
        plan = (
            func.unnest(
                bindparam("kinds", type_=postgresql.ARRAY(String())),
                bindparam("instants", type_=postgresql.ARRAY(DateTime(timezone=True))),
                bindparam("dates", type_=postgresql.ARRAY(Date())),
            )
            .table_valued("kind", "next_fire_at", "occasion_date", name="plan")
            .render_derived()
        )
        source = (
            select(new_user.c.id, plan.c.kind, plan.c.next_fire_at, plan.c.occasion_date)
            .select_from(new_user)
            .join(plan, true())
        )
    return insert(_schedules).from_select(
        ["user_id", "kind", "next_fire_at", "occasion_date"], source
    )


@dataclass(frozen=True)
class _Read:
    statement: Select[Any]  # SQLite runs it through SQLAlchemy
    driver: sql.DriverStatement  # PostgreSQL runs it on the bare asyncpg connection

    @classmethod
    def of(cls, statement: Select[Any]) -> _Read:
        return cls(statement, sql.for_asyncpg(statement))


_USER_WITH_PLAN = _Read.of(_user_with_plan_statement())
_PAGE_FIRST = _Read.of(_page_with_plans_statement(after=False))
_PAGE_AFTER = _Read.of(_page_with_plans_statement(after=True))
_INSERT_USER = insert(_users)
_INSERT_PLAN = insert(_schedules)
_PG_CREATE = sql.for_asyncpg(_create_statement(one_kind=False))
_PG_CREATE_ONE_KIND = sql.for_asyncpg(_create_statement(one_kind=True))

Row = Sequence[Any]
Plan = list[tuple[str, datetime]]


def _plans(rows: Sequence[Row]) -> list[tuple[Row, Plan]]:
    """Rows of (user columns, kind, instant), a user's rows together: each user once, with its
    planned (kind, instant) pairs in row order."""
    users: list[tuple[Row, Plan]] = []
    for row in rows:
        if not users or users[-1][0][0] != row[0]:
            users.append((row, []))
        if row[_PLANNED] is not None:
            users[-1][1].append((row[_PLANNED], row[_PLANNED + 1]))
    return users


async def _read(engine: AsyncEngine, read: _Read, params: dict[str, Any]) -> list[Row]:
    """One read statement, outside any unit of work; run once more on a fresh connection when
    its connection turned out dead (db_faults.retry_stale)."""

    async def attempt() -> list[Row]:
        if engine.dialect.name == "postgresql":
            async with driver_connection(engine) as conn:
                rows: list[Row] = await conn.fetch(read.driver.sql, *read.driver.arguments(params))
                return rows
        # SQLite queues every transaction behind the writer (BEGIN IMMEDIATE, infra/db.py).
        async with engine.begin() as conn:
            return list((await conn.execute(read.statement, params)).all())

    return await retry_stale(attempt, safe=always)


async def read_live_with_plan(engine: AsyncEngine, user_id: uuid.UUID) -> tuple[Row, Plan] | None:
    """A live user's columns (USER_COLUMNS order) and its planned messages, earliest first."""
    users = _plans(await _read(engine, _USER_WITH_PLAN, {"user_id": user_id}))
    return users[0] if users else None


async def read_page_with_plans(
    engine: AsyncEngine, limit: int, after: tuple[datetime, uuid.UUID] | None
) -> list[tuple[Row, Plan]]:
    """Up to `limit` live users after `after` in creation order, each with its plan."""
    if after is None:
        rows = await _read(engine, _PAGE_FIRST, {"limit": limit})
    else:
        params = {"limit": limit, "after_at": after[0], "after_id": after[1]}
        rows = await _read(engine, _PAGE_AFTER, params)
    return _plans(rows)


async def insert_user_with_plan(
    engine: AsyncEngine, values: dict[str, Any], plan: Sequence[tuple[str, datetime, date]]
) -> None:
    """A new user (`values` by USER_COLUMNS name) and its planned messages (kind, instant,
    occasion date), together or not at all. 409 when a live user has the email."""

    async def attempt() -> None:
        if engine.dialect.name == "postgresql":
            params = {
                **values,
                # asyncpg takes JSON as text (the codec SQLAlchemy installs encodes str).
                "notifications": orjson.dumps(values["notifications"]).decode(),
            }
            if len(plan) == 1:
                statement = _PG_CREATE_ONE_KIND
                ((params["kind"], params["next_fire_at"], params["occasion_date"]),) = plan
            else:
                statement = _PG_CREATE
                params["kinds"] = [kind for kind, _, _ in plan]
                params["instants"] = [instant for _, instant, _ in plan]
                params["dates"] = [day for _, _, day in plan]
            async with driver_connection(engine) as conn:
                await conn.execute(statement.sql, *statement.arguments(params))
            return
        async with engine.begin() as conn:
            await conn.execute(_INSERT_USER, values)
            if plan:
                rows = [
                    {"user_id": values["id"], "kind": k, "next_fire_at": at, "occasion_date": d}
                    for k, at, d in plan
                ]
                await conn.execute(_INSERT_PLAN, rows)

    try:
        await attempt()
        return
    except Exception as exc:
        if sql.is_integrity_error(exc):
            raise _email_conflict(exc) from None
        if not is_unavailable(exc):
            raise
        first_failure = exc
    # The connection died under the statement (one from before a restart, say), so whether it
    # landed is unknown. The id is ours: run it again on a fresh connection, and if that
    # collides, a user with our id means the first one did land.
    log.info("db.retried_on_fresh_connection", error=type(first_failure).__name__)
    try:
        await attempt()
    except Exception as exc:
        if not sql.is_integrity_error(exc):
            raise
        if await read_live_with_plan(engine, values["id"]) is None:
            raise _email_conflict(exc) from None
