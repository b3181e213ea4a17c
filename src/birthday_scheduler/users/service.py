"""Users: the rules of create, read, change and delete.

Changes never commit: the route's unit of work does, so a user and its plan are written
together or not at all. The hot paths need no unit of work: a create writes the user and its
plan in one statement, and a read is one statement (repository.py)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from birthday_scheduler.errors import FieldProblem, NotFoundError, ValidationProblem
from birthday_scheduler.infra import keyset
from birthday_scheduler.messages import planning, schedules
from birthday_scheduler.messages.kinds import KINDS
from birthday_scheduler.users import repository as repo
from birthday_scheduler.users.models import User
from birthday_scheduler.users.schemas import NextMessage, UserOut, UserPatch, UserWrite

# The earliest calendar date anywhere on Earth is UTC+14, so "today" reaches that far ahead.
_EARLIEST_ZONE = timedelta(hours=14)


@dataclass(frozen=True)
class UsersService:
    policy: planning.PlanningPolicy

    async def create(self, engine: AsyncEngine, body: UserWrite, now: datetime) -> Document:
        """The user and its plan in one statement; the response is built from what was
        written, not read back."""
        check_dates(body.date_of_birth, body.anniversary_date, now)
        notifications = body.notifications or {}
        values = {
            "id": uuid.uuid4(),
            "first_name": body.first_name,
            "last_name": body.last_name,
            "email": body.email,
            "date_of_birth": body.date_of_birth,
            "timezone": body.timezone,
            "timezone_offset_minutes": body.timezone_offset,
            "anniversary_date": body.anniversary_date,
            "send_local_time": body.send_local_time,
            "notifications": notifications,
            "created_at": now,
            "updated_at": now,
        }
        facts = planning.facts_of(
            body.date_of_birth,
            body.timezone,
            body.timezone_offset,
            body.anniversary_date,
            body.send_local_time,
        )
        enabled = planning.enabled_kinds(notifications)
        plan = planning.new_user_plan(facts, enabled, self.policy.send_time, now)
        await repo.insert_user_with_plan(engine, values, plan)
        # The order GET reads them in: by instant, then kind.
        planned = sorted(((kind, at) for kind, at, _ in plan), key=lambda p: (p[1], p[0]))
        return user_document([values[column.name] for column in repo.USER_COLUMNS], planned)

    async def read(self, engine: AsyncEngine, user_id: uuid.UUID) -> Document:
        """A live user and its next messages: one statement, no transaction around it."""
        found = await repo.read_live_with_plan(engine, user_id)
        if found is None:
            raise NotFoundError("No live user has this id.")
        return user_document(*found)

    async def read_page(self, engine: AsyncEngine, limit: int, cursor: str | None) -> Document:
        """A page of live users with their next messages, in one statement."""
        after = keyset.decode(cursor) if cursor else None
        users = await repo.read_page_with_plans(engine, limit + 1, after)
        more = len(users) > limit
        users = users[:limit]
        last = users[-1][0] if users else None
        return {
            "data": [user_document(row, planned) for row, planned in users],
            "nextCursor": keyset.encode(last[_CREATED_AT], last[0]) if more and last else None,
        }

    async def get(self, session: AsyncSession, user_id: uuid.UUID) -> UserOut:
        user = await _live(session, user_id)
        planned = await schedules.next_messages(session, [user.id])
        return _out(user, planned.get(user.id, []))

    async def replace(
        self, session: AsyncSession, user_id: uuid.UUID, body: UserWrite, now: datetime
    ) -> UserOut:
        whole = body.model_dump()
        whole["notifications"] = body.notifications or {}  # PUT is whole: unnamed kinds are on
        return await self._change(session, user_id, whole, now, merge=False)

    async def patch(
        self, session: AsyncSession, user_id: uuid.UUID, body: UserPatch, now: datetime
    ) -> UserOut:
        changes = body.model_dump(exclude_unset=True)
        # A zone is replaced whole: giving one form clears the other.
        if "timezone" in changes:
            changes["timezone_offset"] = None
        elif "timezone_offset" in changes:
            changes["timezone"] = None
        return await self._change(session, user_id, changes, now, merge=True)

    async def _change(
        self,
        session: AsyncSession,
        user_id: uuid.UUID,
        changes: dict[str, object],
        now: datetime,
        *,
        merge: bool,
    ) -> UserOut:
        user = await _live(session, user_id, lock=True)
        values = {
            ("timezone_offset_minutes" if key == "timezone_offset" else key): value
            for key, value in changes.items()
        }
        if merge and "notifications" in values:  # PATCH: kinds not named keep their setting
            assert isinstance(values["notifications"], dict)
            values["notifications"] = {**user.notifications, **values["notifications"]}
        birth = values.get("date_of_birth", user.date_of_birth)
        anniversary = values.get("anniversary_date", user.anniversary_date)
        assert isinstance(birth, date)
        assert isinstance(anniversary, date | None)
        check_dates(birth, anniversary, now)
        changed = {key for key, value in values.items() if value != getattr(user, key)}
        replan = _kinds_to_replan(changed, user.notifications, values.get("notifications"))
        await repo.update_user(session, user_id, {**values, "updated_at": now})
        await session.refresh(user)  # the UPDATE bypassed the identity map
        facts = planning.facts_of(
            user.date_of_birth,
            user.timezone,
            user.timezone_offset_minutes,
            user.anniversary_date,
            user.send_local_time,
        )
        enabled = planning.enabled_kinds(user.notifications)
        await planning.plan_user(session, user_id, facts, enabled, self.policy, now, replan=replan)
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


def check_dates(date_of_birth: date, anniversary_date: date | None, now: datetime) -> None:
    today_somewhere = (now + _EARLIEST_ZONE).date()
    problems = [
        FieldProblem(field, "must not be in the future")
        for field, value in (("dateOfBirth", date_of_birth), ("anniversaryDate", anniversary_date))
        if value is not None and value > today_somewhere
    ]
    if problems:
        raise ValidationProblem(problems)


# Changing the zone or the send time moves every kind's instant.
_EVERY_KIND = frozenset({"timezone", "timezone_offset_minutes", "send_local_time"})


def _kinds_to_replan(changed: set[str], before: dict[str, bool], after: object) -> set[str]:
    """The kinds an edit moves: those whose date, zone or send time changed, and those turned
    on or off. Other kinds keep their plan (a queued message of theirs is not disturbed)."""
    if changed & _EVERY_KIND:
        return set(KINDS)
    kinds = {name for name, kind in KINDS.items() if changed & kind.reads}
    if "notifications" in changed and isinstance(after, dict):
        kinds |= {k for k in KINDS if before.get(k, True) != after.get(k, True)}
    return kinds


def _out(user: User, planned: list[tuple[str, datetime]]) -> UserOut:
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
        anniversary_date=user.anniversary_date,
        send_local_time=user.send_local_time.strftime("%H:%M") if user.send_local_time else None,
        notifications={kind: user.notifications.get(kind, True) for kind in KINDS},
        next_messages=[NextMessage(kind=kind, at=at) for kind, at in planned],
        next_message_at=planned[0][1] if planned else None,
    )


Document = dict[str, Any]
_CREATED_AT = [column.name for column in repo.USER_COLUMNS].index("created_at")


def user_document(row: Sequence[Any], planned: Sequence[tuple[str, datetime]]) -> Document:
    """UserOut's wire form (its camelCase names, in its field order) from a row in
    repository.USER_COLUMNS order; api/json.py encodes it as pydantic would encode UserOut."""
    (
        user_id,
        first_name,
        last_name,
        email,
        date_of_birth,
        timezone,
        offset,
        anniversary,
        send_local_time,
        notifications,
        created_at,
        updated_at,
    ) = row[: len(repo.USER_COLUMNS)]
    return {
        "id": user_id,
        "firstName": first_name,
        "lastName": last_name,
        "email": email,
        "dateOfBirth": date_of_birth,
        "timezone": timezone,
        "timezoneOffset": offset,
        "anniversaryDate": anniversary,
        "sendLocalTime": send_local_time.strftime("%H:%M") if send_local_time else None,
        "notifications": {kind: notifications.get(kind, True) for kind in KINDS},
        "createdAt": created_at,
        "updatedAt": updated_at,
        "nextMessages": [{"kind": kind, "at": at} for kind, at in planned],
        "nextMessageAt": planned[0][1] if planned else None,
    }
