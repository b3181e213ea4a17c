"""The worker's ledger: the conditional claim into `sending` (the only way to a send),
the late skip, and the attempt's outcome, fenced by the attempt number."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.dml import ReturningUpdate

from birthday_scheduler.infra.sql import rowcount
from birthday_scheduler.messages.ledger.common import S
from birthday_scheduler.messages.ledger.common import ledger_table as _ledger
from birthday_scheduler.messages.models import MessageStatus
from birthday_scheduler.users.models import User

_users = cast(Table, User.__table__)
# A worker may claim these; `sending` only once its holder's lease has run out.
_CLAIMABLE = (S.PENDING, S.QUEUED, S.FAILED)


@dataclass(frozen=True)
class ClaimedMessage:
    id: uuid.UUID
    user_id: uuid.UUID
    kind: str
    attempts: int
    idempotency_key: str
    first_name: str
    last_name: str
    email: str
    user_deleted: bool


def _claim_for_sending_statement() -> ReturningUpdate[Any]:
    c = _ledger.c
    now = bindparam("now", type_=c.lease_until.type)
    return (
        update(_ledger)
        .where(
            c.id == bindparam("message_id", type_=c.id.type),
            c.not_before <= now,
            c.scheduled_at >= bindparam("on_time_since", type_=c.scheduled_at.type),
            or_(
                c.status.in_([s.value for s in _CLAIMABLE]),
                and_(c.status == S.SENDING.value, c.lease_until <= now),
            ),
        )
        .values(
            status=S.SENDING.value,
            attempts=c.attempts + 1,
            lease_until=bindparam("leased_until", type_=c.lease_until.type),
            updated_at=now,
        )
        .returning(c.id, c.user_id, c.kind, c.attempts, c.idempotency_key)
    )


_CLAIM_FOR_SENDING = _claim_for_sending_statement()
_RECIPIENT = select(
    _users.c.first_name, _users.c.last_name, _users.c.email, _users.c.deleted_at
).where(_users.c.id == bindparam("user_id", type_=_users.c.id.type))


async def claim_for_sending(
    session: AsyncSession,
    message_id: uuid.UUID,
    now: datetime,
    lease: timedelta,
    on_time_since: datetime,
) -> ClaimedMessage | None:
    """The only way into `sending`: a conditional update, so two workers never both win.

    Only a row scheduled at or after `on_time_since` (now minus the catch-up window) is taken:
    the window holds at the moment of sending too (see skip_if_late).
    """
    result = await session.execute(
        _CLAIM_FOR_SENDING,
        {
            "message_id": message_id,
            "now": now,
            "leased_until": now + lease,
            "on_time_since": on_time_since,
        },
    )
    claimed = result.one_or_none()
    if claimed is None:
        return None
    user = (await session.execute(_RECIPIENT, {"user_id": claimed[1]})).one()
    return ClaimedMessage(
        id=claimed[0],
        user_id=claimed[1],
        kind=claimed[2],
        attempts=claimed[3],
        idempotency_key=claimed[4],
        first_name=user.first_name,
        last_name=user.last_name,
        email=user.email,
        user_deleted=user.deleted_at is not None,
    )


async def record_outcome(
    session: AsyncSession,
    message_id: uuid.UUID,
    attempt: int,
    status: MessageStatus,
    now: datetime,
    *,
    error: str | None = None,
    retry_at: datetime | None = None,
) -> bool:
    """Record what an attempt came to. Fenced by the attempt number, so a worker that lost
    its lease (and whose row was handed to another) cannot overwrite the newer outcome."""
    c = _ledger.c
    values: dict[str, object] = {"status": status.value, "updated_at": now}
    if status == S.SENT:
        values |= {"sent_at": now, "last_error": None, "lease_until": None}
    elif status == S.FAILED:
        assert retry_at is not None
        values |= {"not_before": retry_at, "lease_until": retry_at, "last_error": error}
    else:
        values |= {"lease_until": None, "last_error": error}
    result = await session.execute(
        update(_ledger)
        .where(c.id == message_id, c.status == S.SENDING.value, c.attempts == attempt)
        .values(values)
    )
    return bool(rowcount(result))


async def skip_if_late(
    session: AsyncSession,
    message_id: uuid.UUID,
    now: datetime,
    on_time_since: datetime,
    reason: str,
) -> bool:
    """Record `skipped` a row that is still waiting to be sent but whose instant is older than
    the catch-up window (held back by an outage, an open breaker, a DLQ replay)."""
    c = _ledger.c
    result = await session.execute(
        update(_ledger)
        .where(
            c.id == message_id,
            c.scheduled_at < on_time_since,
            or_(
                c.status.in_([s.value for s in _CLAIMABLE]),
                and_(c.status == S.SENDING.value, c.lease_until <= now),
            ),
        )
        .values(status=S.SKIPPED.value, lease_until=None, last_error=reason, updated_at=now)
    )
    return bool(rowcount(result))


async def status_of(session: AsyncSession, message_id: uuid.UUID) -> MessageStatus | None:
    value = await session.scalar(select(_ledger.c.status).where(_ledger.c.id == message_id))
    return None if value is None else MessageStatus(value)
