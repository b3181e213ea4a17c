"""Publish bookkeeping: what a confirmed or failed publish means for each row, the sweep
that finds rows whose holder was lost, and a dead row's reset for a DLQ replay."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Integer, String, Uuid, any_, bindparam, case, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.dml import Update
from sqlalchemy.sql.selectable import Select

from birthday_scheduler.infra.sql import rowcount
from birthday_scheduler.messages.ledger.common import MAX_IDS_PER_STATEMENT, S, update_ids
from birthday_scheduler.messages.ledger.common import ledger_table as _ledger
from birthday_scheduler.messages.models import ACTIVE_STATUSES, MessageStatus
from birthday_scheduler.messages.sweep import StaleRow, SweepPlan


def _move_untouched_statement() -> Update:
    c = _ledger.c
    now = bindparam("now", type_=c.updated_at.type)
    return (
        update(_ledger)
        .where(
            c.id == any_(bindparam("ids", type_=ARRAY(Uuid()))),
            c.status == any_(bindparam("from_statuses", type_=ARRAY(String()))),
            c.updated_at == now,
        )
        .values(
            status=bindparam("to_status", type_=c.status.type),
            lease_until=bindparam("lease_until", type_=c.lease_until.type),
            updated_at=now,
        )
    )


_MOVE_UNTOUCHED_FROM_ARRAY = _move_untouched_statement()


async def _move_untouched(
    session: AsyncSession,
    ids: Sequence[uuid.UUID],
    now: datetime,
    *,
    from_statuses: Sequence[MessageStatus],
    to_status: MessageStatus,
    lease_until: datetime,
) -> None:
    """Move rows the publisher stamped with `now` and nobody has touched since.

    Only rows as the publisher left them: a worker may have claimed a row and recorded its
    outcome between the publish and this update, and a `failed` with a fresh retry time turned
    into `queued` (or `pending`) would wait for a publish that is not coming.
    """
    if not ids:
        return
    if session.get_bind().dialect.name == "postgresql":
        # Array parameters: one cached statement, whatever the number of ids.
        await session.execute(
            _MOVE_UNTOUCHED_FROM_ARRAY,
            {
                "ids": list(ids),
                "from_statuses": list(from_statuses),
                "now": now,
                "to_status": to_status.value,
                "lease_until": lease_until,
            },
        )
        return
    # In slices elsewhere: each id is its own parameter there, and parameters are bounded.
    for start in range(0, len(ids), MAX_IDS_PER_STATEMENT):
        chunk = ids[start : start + MAX_IDS_PER_STATEMENT]
        await session.execute(
            update(_ledger)
            .where(
                _ledger.c.id.in_(chunk),
                _ledger.c.status.in_(list(from_statuses)),
                _ledger.c.updated_at == now,
            )
            .values(status=to_status.value, lease_until=lease_until, updated_at=now)
        )


async def mark_queued(
    session: AsyncSession, ids: Sequence[uuid.UUID], now: datetime, lease: timedelta
) -> None:
    """After a confirmed re-publish (the sweep, a DLQ replay): the queue holds these rows
    until the lease runs out.

    `queued` rows are included: the sweep re-publishes them (a lost `queued` row, a `sending`
    row handed back) with only the publish grace as lease, and without the full lease here
    they would be published again every grace period while they wait in a long queue.
    """
    await _move_untouched(
        session,
        ids,
        now,
        from_statuses=(S.PENDING, S.QUEUED, S.FAILED),
        to_status=S.QUEUED,
        lease_until=now + lease,
    )


async def release_unpublished(
    session: AsyncSession, ids: Sequence[uuid.UUID], now: datetime, grace: timedelta
) -> None:
    """After a failed publish of freshly planned rows (written `queued`): back to `pending`,
    for the sweep to publish once the grace has passed, instead of a whole queue lease."""
    await _move_untouched(
        session, ids, now, from_statuses=(S.QUEUED,), to_status=S.PENDING, lease_until=now + grace
    )


def _lock_stale_statement() -> Select[Any]:
    c = _ledger.c
    return (
        select(c.id, c.status, c.scheduled_at)
        .where(
            c.status.in_([s.value for s in ACTIVE_STATUSES]),
            c.lease_until <= bindparam("now", type_=c.lease_until.type),
        )
        .order_by(c.lease_until)
        .limit(bindparam("limit", type_=Integer()))
        .with_for_update(skip_locked=True)
    )


_LOCK_STALE = _lock_stale_statement()


async def lock_stale(session: AsyncSession, now: datetime, limit: int) -> list[StaleRow]:
    """Rows whose holder is presumed lost (or whose retry is due), locked for this transaction;
    other replicas skip them. sweep.plan_sweep decides what becomes of each.

    Covers committed-but-unpublished `pending` rows, `queued` rows the broker may have lost,
    `sending` rows of a killed worker and `failed` rows whose retry time has come.
    """
    result = await session.execute(_LOCK_STALE, {"now": now, "limit": limit})
    return list(map(StaleRow._make, result.all()))


async def apply_sweep(
    session: AsyncSession,
    plan: SweepPlan,
    now: datetime,
    *,
    publish_grace: timedelta,
    queue_lease: timedelta,
    late_reason: str,
) -> None:
    """Write the sweep's decisions. Rows to publish again carry only the publish grace until a
    confirmed publish gives them the queue's lease (mark_queued); a `sending` row is handed
    back as `queued`, its attempt still counted."""
    c = _ledger.c
    await update_ids(
        session,
        plan.republish,
        status=case((c.status == S.SENDING.value, S.QUEUED.value), else_=c.status),
        lease_until=now + publish_grace,
        updated_at=now,
    )
    await update_ids(
        session,
        plan.keep_waiting,
        status=case((c.status == S.SENDING.value, S.QUEUED.value), else_=c.status),
        lease_until=now + queue_lease,
        updated_at=now,
    )
    await update_ids(
        session,
        plan.late,
        status=S.SKIPPED.value,
        lease_until=None,
        last_error=late_reason,
        updated_at=now,
    )


async def reset_for_replay(
    session: AsyncSession, message_id: uuid.UUID, now: datetime, grace: timedelta
) -> bool:
    """A dead row gets a fresh set of attempts (DLQ replay); it is published after commit."""
    c = _ledger.c
    result = await session.execute(
        update(_ledger)
        .where(c.id == message_id, c.status == S.DEAD.value)
        .values(
            status=S.PENDING.value,
            attempts=0,
            not_before=now,
            lease_until=now + grace,
            updated_at=now,
        )
    )
    return bool(rowcount(result))
