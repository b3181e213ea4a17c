"""The unit of work is one real transaction on both backends, savepoints included.

pysqlite (under aiosqlite) emits no BEGIN of its own: a SAVEPOINT then opens the transaction and
its RELEASE commits it, so a user could be committed without its plan.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import func, select

from birthday_scheduler.entrypoints import runtime
from birthday_scheduler.infra.db import unit_of_work
from birthday_scheduler.users import repository as users_repo
from birthday_scheduler.users.models import User

NOW = datetime(2026, 6, 15, 12, tzinfo=UTC)


class Boom(Exception):
    pass


async def test_a_savepoint_inside_a_failed_unit_of_work_is_rolled_back(
    resources: runtime.Resources,
) -> None:
    user_id = uuid.uuid4()

    async def insert_then_fail() -> None:
        async with unit_of_work(resources.sessions) as session:
            await users_repo.insert_user(  # runs inside a SAVEPOINT
                session,
                {
                    "id": user_id,
                    "first_name": "A",
                    "last_name": "B",
                    "email": f"{user_id.hex}@example.com",
                    "date_of_birth": date(1990, 1, 1),
                    "timezone": None,
                    "timezone_offset_minutes": 0,
                    "created_at": NOW,
                    "updated_at": NOW,
                },
            )
            raise Boom  # the plan that should have followed fails

    with pytest.raises(Boom):
        await insert_then_fail()

    async with resources.sessions() as session:
        count = await session.scalar(select(func.count()).select_from(User))
    assert count == 0
