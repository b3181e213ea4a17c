"""The worker's ledger: the conditional claim into `sending` (the only way to a send),
the late skip, and the attempt's outcome, fenced by the attempt number.

Each step exists for one message and for a batch (`claim_batch`, `record_outcomes`): a worker
batches the messages it has in flight, so a delivery costs a share of a round trip instead of
several. On PostgreSQL a batch is one cached statement over arrays; elsewhere (SQLite, a local
file) it is the single-message statements in one transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Boolean,
    DateTime,
    Integer,
    String,
    Table,
    Uuid,
    and_,
    bindparam,
    column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.dml import ReturningUpdate
from sqlalchemy.sql.elements import ColumnElement

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


@dataclass(frozen=True)
class ClaimAnswer:
    """What a claim in a batch came to for one message.

    `claimed` set: the row is ours, in `sending` with its attempt counted (a deleted user's row
    is then already recorded `cancelled` in the same transaction). Otherwise `skipped_late`
    says whether the row was recorded `skipped` for being past the catch-up window; neither
    means it is not claimable now (sent, finished, held by another worker, not due yet).
    """

    claimed: ClaimedMessage | None
    skipped_late: bool = False


NOT_CLAIMABLE = ClaimAnswer(None)


@dataclass(frozen=True)
class OutcomeWrite:
    """One attempt's outcome to record (see record_outcome)."""

    message_id: uuid.UUID
    attempt: int
    status: MessageStatus
    now: datetime
    error: str | None = None
    retry_at: datetime | None = None


def _claimable(now: ColumnElement[Any] | datetime) -> ColumnElement[bool]:
    c = _ledger.c
    return or_(
        c.status.in_([s.value for s in _CLAIMABLE]),
        and_(c.status == S.SENDING.value, c.lease_until <= now),
    )


def _claim_for_sending_statement() -> ReturningUpdate[Any]:
    c = _ledger.c
    now = bindparam("now", type_=c.lease_until.type)
    return (
        update(_ledger)
        .where(
            c.id == bindparam("message_id", type_=c.id.type),
            c.not_before <= now,
            c.scheduled_at >= bindparam("on_time_since", type_=c.scheduled_at.type),
            _claimable(now),
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


def _outcome_values(
    status: MessageStatus, now: datetime, error: str | None, retry_at: datetime | None
) -> dict[str, object]:
    values: dict[str, object] = {"status": status.value, "updated_at": now}
    if status == S.SENT:
        values |= {"sent_at": now, "last_error": None, "lease_until": None}
    elif status == S.FAILED:
        assert retry_at is not None
        values |= {"not_before": retry_at, "lease_until": retry_at, "last_error": error}
    else:
        values |= {"lease_until": None, "last_error": error}
    return values


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
    result = await session.execute(
        update(_ledger)
        .where(c.id == message_id, c.status == S.SENDING.value, c.attempts == attempt)
        .values(_outcome_values(status, now, error, retry_at))
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
        .where(c.id == message_id, c.scheduled_at < on_time_since, _claimable(now))
        .values(status=S.SKIPPED.value, lease_until=None, last_error=reason, updated_at=now)
    )
    return bool(rowcount(result))


async def status_of(session: AsyncSession, message_id: uuid.UUID) -> MessageStatus | None:
    value = await session.scalar(select(_ledger.c.status).where(_ledger.c.id == message_id))
    return None if value is None else MessageStatus(value)


# --- batches -----------------------------------------------------------------------------------

# claim_batch on PostgreSQL: one statement, so it needs no transaction around it. `claimed` is
# claim_for_sending over an array of ids with the recipient joined in; a deleted user's row
# goes straight to `cancelled` with its attempt counted, as a claim followed by
# record_outcome(CANCELLED) leaves it. `skipped` is skip_if_late for the same ids: its
# `scheduled_at < :on_time_since` is the claim's condition negated, so the two never meet a row
# twice. Statuses come as arrays (from _CLAIMABLE), so the text names none of them.
_CLAIM_BATCH = (
    text(
        """
    WITH claimed AS (
        UPDATE message_logs AS m
        SET status = CASE WHEN u.deleted_at IS NULL THEN :sending ELSE :cancelled END,
            attempts = m.attempts + 1,
            lease_until = CASE WHEN u.deleted_at IS NULL THEN :leased_until END,
            last_error = CASE WHEN u.deleted_at IS NULL THEN m.last_error END,
            updated_at = :now
        FROM users AS u
        WHERE m.id = ANY(:ids) AND u.id = m.user_id
          AND m.not_before <= :now AND m.scheduled_at >= :on_time_since
          AND (m.status = ANY(:claimable) OR (m.status = :sending AND m.lease_until <= :now))
        RETURNING m.id, m.user_id, m.kind, m.attempts, m.idempotency_key,
                  u.first_name, u.last_name, u.email, u.deleted_at IS NOT NULL AS user_deleted
    ), skipped AS (
        UPDATE message_logs AS m
        SET status = :skipped, lease_until = NULL, last_error = :reason, updated_at = :now
        WHERE m.id = ANY(:ids) AND m.scheduled_at < :on_time_since
          AND (m.status = ANY(:claimable) OR (m.status = :sending AND m.lease_until <= :now))
        RETURNING m.id
    )
    SELECT id, user_id, kind, attempts, idempotency_key, first_name, last_name, email,
           user_deleted
    FROM claimed
    UNION ALL
    SELECT id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM skipped
    """
    )
    .bindparams(
        bindparam("ids", type_=ARRAY(Uuid())),
        bindparam("claimable", type_=ARRAY(String())),
        bindparam("sending", type_=String()),
        bindparam("cancelled", type_=String()),
        bindparam("skipped", type_=String()),
        bindparam("reason", type_=String()),
        bindparam("now", type_=DateTime(timezone=True)),
        bindparam("leased_until", type_=DateTime(timezone=True)),
        bindparam("on_time_since", type_=DateTime(timezone=True)),
    )
    .columns(
        _ledger.c.id,
        _ledger.c.user_id,
        _ledger.c.kind,
        _ledger.c.attempts,
        _ledger.c.idempotency_key,
        _users.c.first_name,
        _users.c.last_name,
        _users.c.email,
        column("user_deleted", Boolean()),
    )
)
_CLAIM_BATCH_CONSTANTS = {
    "claimable": [s.value for s in _CLAIMABLE],
    "sending": S.SENDING.value,
    "cancelled": S.CANCELLED.value,
    "skipped": S.SKIPPED.value,
}

# record_outcome for a batch, one statement: each row's own outcome, fenced by its own attempt
# number. A NULL retry_at leaves not_before alone and clears the lease, as record_outcome does
# for every status but `failed`; sent_at is set for `sent` only. The fence also makes two
# writes for one row safe in one statement: only the one of the row's current attempt matches.
_RECORD_OUTCOMES = (
    text(
        """
    UPDATE message_logs AS m
    SET status = v.status,
        updated_at = v.now,
        sent_at = CASE WHEN v.status = :sent THEN v.now ELSE m.sent_at END,
        not_before = COALESCE(v.retry_at, m.not_before),
        lease_until = v.retry_at,
        last_error = v.error
    FROM unnest(:ids, :attempts, :statuses, :nows, :errors, :retry_ats)
        AS v(id, attempt, status, now, error, retry_at)
    WHERE m.id = v.id AND m.status = :sending AND m.attempts = v.attempt
    RETURNING m.id, m.attempts
    """
    )
    .bindparams(
        bindparam("sent", type_=String()),
        bindparam("sending", type_=String()),
        bindparam("ids", type_=ARRAY(Uuid())),
        bindparam("attempts", type_=ARRAY(Integer())),
        bindparam("statuses", type_=ARRAY(String())),
        bindparam("nows", type_=ARRAY(DateTime(timezone=True))),
        bindparam("errors", type_=ARRAY(String())),
        bindparam("retry_ats", type_=ARRAY(DateTime(timezone=True))),
    )
    .columns(_ledger.c.id, _ledger.c.attempts)
)


def is_one_statement(session: AsyncSession) -> bool:
    """Whether claim_batch and record_outcomes are one statement each on this session's
    database (PostgreSQL), which then may run them without a transaction around them."""
    return session.get_bind().dialect.name == "postgresql"


async def claim_batch(
    session: AsyncSession,
    message_ids: Sequence[uuid.UUID],
    now: datetime,
    lease: timedelta,
    on_time_since: datetime,
    late_reason: str,
) -> list[ClaimAnswer]:
    """claim_for_sending for each id; skip_if_late for those not claimed; a deleted user's
    claimed row recorded `cancelled`. One answer per id, in order.

    An id given twice is claimed once: its first occurrence gets the answer, the later ones are
    not claimable, as a second claim right after the first would be.
    """
    unique = list(dict.fromkeys(message_ids))
    if is_one_statement(session):
        answers = await _claim_batch_from_arrays(
            session, unique, now, lease, on_time_since, late_reason
        )
    else:
        answers = await _claim_each(session, unique, now, lease, on_time_since, late_reason)
    # Each id's first occurrence takes its answer; a repeat finds it gone.
    return [answers.pop(message_id, NOT_CLAIMABLE) for message_id in message_ids]


async def _claim_batch_from_arrays(
    session: AsyncSession,
    ids: list[uuid.UUID],
    now: datetime,
    lease: timedelta,
    on_time_since: datetime,
    late_reason: str,
) -> dict[uuid.UUID, ClaimAnswer]:
    result = await session.execute(
        _CLAIM_BATCH,
        {
            **_CLAIM_BATCH_CONSTANTS,
            "ids": ids,
            "now": now,
            "leased_until": now + lease,
            "on_time_since": on_time_since,
            "reason": late_reason,
        },
    )
    answers: dict[uuid.UUID, ClaimAnswer] = {}
    for row in result:
        if row.user_id is None:  # from `skipped`
            answers[row.id] = ClaimAnswer(None, skipped_late=True)
            continue
        answers[row.id] = ClaimAnswer(
            ClaimedMessage(
                id=row.id,
                user_id=row.user_id,
                kind=row.kind,
                attempts=row.attempts,
                idempotency_key=row.idempotency_key,
                first_name=row.first_name,
                last_name=row.last_name,
                email=row.email,
                user_deleted=row.user_deleted,
            )
        )
    return answers


async def _claim_each(
    session: AsyncSession,
    ids: list[uuid.UUID],
    now: datetime,
    lease: timedelta,
    on_time_since: datetime,
    late_reason: str,
) -> dict[uuid.UUID, ClaimAnswer]:
    answers: dict[uuid.UUID, ClaimAnswer] = {}
    for message_id in ids:
        claimed = await claim_for_sending(session, message_id, now, lease, on_time_since)
        if claimed is not None:
            if claimed.user_deleted:
                await record_outcome(session, claimed.id, claimed.attempts, S.CANCELLED, now)
            answers[message_id] = ClaimAnswer(claimed)
        elif await skip_if_late(session, message_id, now, on_time_since, late_reason):
            answers[message_id] = ClaimAnswer(None, skipped_late=True)
    return answers


async def record_outcomes(session: AsyncSession, writes: Sequence[OutcomeWrite]) -> list[bool]:
    """record_outcome for each write; whether each was recorded (False: fenced off, the row
    has moved on), in order. Each write is fenced as if it were alone."""
    if not writes:
        return []
    if not is_one_statement(session):
        return [
            await record_outcome(
                session,
                w.message_id,
                w.attempt,
                w.status,
                w.now,
                error=w.error,
                retry_at=w.retry_at,
            )
            for w in writes
        ]
    for w in writes:
        if w.status == S.FAILED and w.retry_at is None:
            raise ValueError("a failed attempt needs its retry time")
    result = await session.execute(
        _RECORD_OUTCOMES,
        {
            "sent": S.SENT.value,
            "sending": S.SENDING.value,
            "ids": [w.message_id for w in writes],
            "attempts": [w.attempt for w in writes],
            "statuses": [w.status.value for w in writes],
            "nows": [w.now for w in writes],
            "errors": [w.error for w in writes],
            # Only `failed` keeps a time, as record_outcome does.
            "retry_ats": [w.retry_at if w.status == S.FAILED else None for w in writes],
        },
    )
    written = {(row.id, row.attempts) for row in result}
    return [(w.message_id, w.attempt) in written for w in writes]
