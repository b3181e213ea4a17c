"""Users: the rules of create, read, change and delete. Never commits; the route's unit of
work does, so a user and its plan are written together or not at all."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from birthday_scheduler.errors import FieldProblem, NotFoundError, ValidationProblem
from birthday_scheduler.infra import keyset
from birthday_scheduler.messages import planning, schedules
from birthday_scheduler.users import repository as repo
from birthday_scheduler.users.models import User
from birthday_scheduler.users.schemas import UserOut, UserPage, UserPatch, UserWrite

# The earliest calendar date anywhere on Earth is UTC+14, so "today" reaches that far ahead.
_EARLIEST_ZONE = timedelta(hours=14)


@dataclass(frozen=True)
class UsersService:
    policy: planning.PlanningPolicy

    async def create(self, session: AsyncSession, body: UserWrite, now: datetime) -> UserOut:
        _check_birth_date(body.date_of_birth, now)
        user_id = uuid.uuid4()
        await repo.insert_user(
            session,
            {
                "id": user_id,
                "first_name": body.first_name,
                "last_name": body.last_name,
                "email": body.email,
                "date_of_birth": body.date_of_birth,
                "timezone": body.timezone,
                "timezone_offset_minutes": body.timezone_offset,
                "created_at": now,
                "updated_at": now,
            },
        )
        facts = planning.facts_of(body.date_of_birth, body.timezone, body.timezone_offset)
        await planning.plan_user(session, user_id, facts, self.policy, now)
        return await self.get(session, user_id)

    async def get(self, session: AsyncSession, user_id: uuid.UUID) -> UserOut:
        user = await _live(session, user_id)
        fires = await schedules.next_fire_at(session, [user.id])
        return _out(user, fires.get(user.id))

    async def list_page(self, session: AsyncSession, limit: int, cursor: str | None) -> UserPage:
        users = await repo.page(session, limit + 1, keyset.decode(cursor) if cursor else None)
        more = len(users) > limit
        users = users[:limit]
        fires = await schedules.next_fire_at(session, [u.id for u in users])
        return UserPage(
            data=[_out(u, fires.get(u.id)) for u in users],
            next_cursor=keyset.encode(users[-1].created_at, users[-1].id) if more else None,
        )

    async def replace(
        self, session: AsyncSession, user_id: uuid.UUID, body: UserWrite, now: datetime
    ) -> UserOut:
        return await self._change(session, user_id, body.model_dump(), now)

    async def patch(
        self, session: AsyncSession, user_id: uuid.UUID, body: UserPatch, now: datetime
    ) -> UserOut:
        changes = body.model_dump(exclude_unset=True)
        # A zone is replaced whole: giving one form clears the other.
        if "timezone" in changes:
            changes["timezone_offset"] = None
        elif "timezone_offset" in changes:
            changes["timezone"] = None
        return await self._change(session, user_id, changes, now)

    async def _change(
        self, session: AsyncSession, user_id: uuid.UUID, changes: dict[str, object], now: datetime
    ) -> UserOut:
        user = await _live(session, user_id, lock=True)
        values = {
            ("timezone_offset_minutes" if key == "timezone_offset" else key): value
            for key, value in changes.items()
        }
        if "date_of_birth" in values:
            assert isinstance(values["date_of_birth"], date)
            _check_birth_date(values["date_of_birth"], now)
        replan = any(
            key in values and values[key] != getattr(user, key)
            for key in ("date_of_birth", "timezone", "timezone_offset_minutes")
        )
        await repo.update_user(session, user_id, {**values, "updated_at": now})
        await session.refresh(user)  # the UPDATE bypassed the identity map
        if replan:
            facts = planning.facts_of(
                user.date_of_birth, user.timezone, user.timezone_offset_minutes
            )
            await planning.plan_user(session, user_id, facts, self.policy, now, replan=True)
        return await self.get(session, user_id)

    async def delete(self, session: AsyncSession, user_id: uuid.UUID, now: datetime) -> None:
        if not await repo.soft_delete(session, user_id, now):
            raise NotFoundError("No live user has this id.")
        await planning.forget_user(session, user_id, now)


async def _live(session: AsyncSession, user_id: uuid.UUID, *, lock: bool = False) -> User:
    user = await repo.get_live(session, user_id, lock=lock)
    if user is None:
        raise NotFoundError("No live user has this id.")
    return user


def _check_birth_date(value: date, now: datetime) -> None:
    if value > (now + _EARLIEST_ZONE).date():
        raise ValidationProblem([FieldProblem("dateOfBirth", "must not be in the future")])


def _out(user: User, next_message_at: datetime | None) -> UserOut:
    return UserOut(
        id=user.id,
        first_name=user.first_name,
        last_name=user.last_name,
        email=user.email,
        date_of_birth=user.date_of_birth,
        timezone=user.timezone,
        timezone_offset=user.timezone_offset_minutes,
        created_at=user.created_at,
        updated_at=user.updated_at,
        next_message_at=next_message_at,
    )
