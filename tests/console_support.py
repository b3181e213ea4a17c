"""Helpers for the console's tests: users, planned fires and ledger rows written straight into
the tables at chosen instants, and a signed-in httpx client."""

from __future__ import annotations

import re
import uuid
from datetime import date, datetime, timedelta

import httpx
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from birthday_scheduler.infra.db import unit_of_work
from birthday_scheduler.messages.kinds import BIRTHDAY
from birthday_scheduler.messages.models import MessageLog, MessageSchedule
from birthday_scheduler.users.models import User

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


async def add_user(
    sessions: async_sessionmaker[AsyncSession],
    now: datetime,
    *,
    first_name: str = "Ada",
    email: str | None = None,
    offset_minutes: int | None = 0,
    timezone: str | None = None,
) -> uuid.UUID:
    user_id = uuid.uuid4()
    async with unit_of_work(sessions) as session:
        await session.execute(
            insert(User).values(
                id=user_id,
                first_name=first_name,
                last_name="Lovelace",
                email=email or f"user-{user_id.hex[:10]}@example.com",
                date_of_birth=date(1990, 7, 1),
                timezone=timezone,
                timezone_offset_minutes=offset_minutes if timezone is None else None,
                created_at=now,
                updated_at=now,
            )
        )
    return user_id


async def plan(
    sessions: async_sessionmaker[AsyncSession], user_id: uuid.UUID, fire_at: datetime
) -> None:
    async with unit_of_work(sessions) as session:
        await session.execute(
            insert(MessageSchedule).values(
                user_id=user_id,
                kind=BIRTHDAY.name,
                next_fire_at=fire_at,
                occasion_date=fire_at.date(),
            )
        )


async def ledger_row(
    sessions: async_sessionmaker[AsyncSession],
    user_id: uuid.UUID,
    status: str,
    at: datetime,
    *,
    attempts: int = 1,
    last_error: str | None = None,
    occasion: date | None = None,
) -> uuid.UUID:
    """A row that took `status` at `at` (sent_at too when sent); scheduled an hour earlier and
    held by nobody (no lease), so a running sweeper leaves it alone."""
    row_id = uuid.uuid4()
    async with unit_of_work(sessions) as session:
        await session.execute(
            insert(MessageLog).values(
                id=row_id,
                user_id=user_id,
                kind=BIRTHDAY.name,
                occasion_date=occasion or (at - timedelta(hours=1)).date(),
                idempotency_key=str(row_id),
                status=status,
                attempts=attempts,
                last_error=last_error,
                scheduled_at=at - timedelta(hours=1),
                not_before=at + timedelta(days=30),
                lease_until=at + timedelta(days=30) if status == "failed" else None,
                sent_at=at if status == "sent" else None,
                created_at=at - timedelta(hours=1),
                updated_at=at,
            )
        )
    return row_id


def csrf_of(page: httpx.Response) -> str:
    found = CSRF.search(page.text)
    assert found is not None, "no CSRF token in the page"
    return found.group(1)


async def sign_in(http: httpx.AsyncClient, token: str) -> str:
    """Sign in through the form as a browser does; returns the session's CSRF token."""
    form = await http.get("/admin/signin")
    assert form.status_code == 200, form.text
    done = await http.post(
        "/admin/signin", data={"csrf": csrf_of(form), "next": "/admin", "token": token}
    )
    assert done.status_code == 303, done.text
    assert done.headers["location"] == "/admin"
    overview = await http.get("/admin")
    assert overview.status_code == 200
    return csrf_of(overview)
