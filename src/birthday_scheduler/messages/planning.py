"""Planning rules: when each user's messages fire, and what a re-plan or a delete does.

Pure time math lives in timemath.py; SQL in ledger/ and schedules.py. Nothing here commits:
the caller's unit of work does.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfoNotFoundError

from sqlalchemy.ext.asyncio import AsyncSession

from birthday_scheduler.messages import schedules
from birthday_scheduler.messages.kinds import KINDS, MessageKind, PlanningFacts
from birthday_scheduler.messages.ledger import occasions, planned
from birthday_scheduler.messages.models import MessageStatus
from birthday_scheduler.messages.timemath import (
    Occurrence,
    next_occurrence,
    occurrence_in_year,
    zone_for,
)

# Ledger ids are derived from the schedule, so the same occasion always has the same id and
# idempotency key, whichever replica plans it and however often.
LEDGER_NAMESPACE = uuid.UUID("6f1f5a0e-8d8e-4f39-9d0c-5b1c1f0e2b7a")
_NAMESPACE_BYTES = LEDGER_NAMESPACE.bytes


def ledger_id(user_id: uuid.UUID, kind: str, occasion: date) -> uuid.UUID:
    """uuid5(LEDGER_NAMESPACE, "<user>/<kind>/<date>"), spelled out: the namespace's bytes are
    computed once, which takes a third off a call that a due wave makes once per row."""
    name = f"{user_id}/{kind}/{occasion.isoformat()}".encode()
    digest = hashlib.sha1(_NAMESPACE_BYTES + name, usedforsecurity=False).digest()
    return uuid.UUID(bytes=digest[:16], version=5)


@dataclass(frozen=True)
class PlanningPolicy:
    send_time: time
    catch_up_window: timedelta
    # How long the queue may hold a row before the sweep publishes it again
    # (MESSAGE_VISIBILITY_TIMEOUT_S).
    queue_lease: timedelta
    # How long a row the sweep re-publishes, or whose publish failed, waits for its publish.
    publish_grace: timedelta


def facts_of(
    date_of_birth: date,
    timezone: str | None,
    timezone_offset_minutes: int | None,
    anniversary_date: date | None = None,
    send_local_time: time | None = None,
) -> PlanningFacts:
    return PlanningFacts(
        date_of_birth=date_of_birth,
        zone=_zone(timezone, timezone_offset_minutes),
        anniversary_date=anniversary_date,
        send_time=send_local_time,
    )


# A due wave looks up the same few hundred zones thousands of times.
_zone = lru_cache(maxsize=4096)(zone_for)


def first_open_occurrence(
    kind: MessageKind,
    facts: PlanningFacts,
    default_send_time: time,
    now: datetime,
    done_years: Collection[int] = (),
) -> Occurrence | None:
    """Pure: the kind's first occurrence at or after `now` in a year not in `done_years`, at the
    user's own send time or the default; None when the user has no such occasion."""
    anchor = kind.anchor(facts)
    if anchor is None:
        return None
    send_time = facts.send_time or default_send_time
    occurrence = next_occurrence(anchor, facts.zone, send_time, now)
    while occurrence.local_date.year in done_years:
        occurrence = occurrence_in_year(
            anchor, facts.zone, send_time, occurrence.local_date.year + 1
        )
    return occurrence


def enabled_kinds(notifications: dict[str, bool]) -> list[str]:
    """The kinds a user receives, in registry order: every kind unless turned off."""
    return [kind for kind in KINDS if notifications.get(kind, True)]


def new_user_plan(
    facts: PlanningFacts, enabled: Collection[str], send_time: time, now: datetime
) -> list[tuple[str, datetime, date]]:
    """(kind, instant, occasion date) of each kind a new user receives: what plan_user writes
    for a user with no history (nothing for a kind turned off or a date the user lacks). Pure,
    so POST /users and the bulk import plan without a session."""
    plan = []
    for kind in KINDS.values():
        if kind.name not in enabled:
            continue
        occurrence = first_open_occurrence(kind, facts, send_time, now)
        if occurrence is not None:
            plan.append((kind.name, occurrence.instant, occurrence.local_date))
    return plan


async def plan_user(
    session: AsyncSession,
    user_id: uuid.UUID,
    facts: PlanningFacts,
    enabled: Collection[str],
    policy: PlanningPolicy,
    now: datetime,
    *,
    replan: Collection[str] | None = None,
) -> None:
    """Plan every kind of a new user, or re-plan the kinds named in `replan` after an edit.

    A kind the user turned off, or whose date the user does not have, gets no schedule. A
    re-plan first cancels that kind's messages on which no attempt was made, and never plans a
    year whose occasion has started (sent, or an attempt made): one message per kind per year,
    whatever the edits. It takes the user's schedules first, so a tick that holds them (and may
    be writing this year's row) commits before the re-plan looks at the ledger.
    """
    kinds = [kind for kind in KINDS.values() if replan is None or kind.name in replan]
    if replan is not None:
        if not kinds:
            return
        await schedules.lock_user_schedules(session, user_id)
        for kind in kinds:
            await occasions.cancel_unstarted(session, user_id, now, kind=kind.name)
    for kind in kinds:
        occurrence = None
        if kind.name in enabled:
            done = (
                await occasions.started_years(session, user_id, kind.name)
                if replan is not None
                else set()
            )
            occurrence = first_open_occurrence(kind, facts, policy.send_time, now, done)
        if occurrence is None:
            await schedules.drop_schedules(session, [(user_id, kind.name)])
            continue
        await schedules.upsert_schedule(
            session,
            schedules.ScheduleAdvance(
                user_id, kind.name, occurrence.instant, occurrence.local_date
            ),
        )


async def forget_user(session: AsyncSession, user_id: uuid.UUID, now: datetime) -> None:
    """A deleted user: nothing further is planned and nothing unsent goes out."""
    await schedules.delete_schedules(session, user_id)
    await occasions.cancel_unstarted(session, user_id, now)


@dataclass(frozen=True)
class TickPlan:
    rows: list[planned.NewLedgerRow]
    advances: list[schedules.ScheduleAdvance]
    # Schedules to remove: an occasion the user no longer has, or one that cannot be planned.
    dropped: list[tuple[uuid.UUID, str]]
    # Occasions that cannot be planned (a kind no longer defined, a zone missing from the
    # host's tzdata), with the reason: written `dead`, so one bad row never stalls a tick.
    dead: list[tuple[planned.NewLedgerRow, str]]


def plan_due(
    due: Sequence[schedules.DueSchedule], policy: PlanningPolicy, now: datetime
) -> TickPlan:
    """Pure: the ledger rows and schedule advances for schedules that have come due.

    Rows are written `queued`, leased for a whole queue lease: the scheduler publishes them as
    soon as the transaction commits, so writing `pending` and then `queued` would write every
    row twice. If that publish fails, the scheduler hands them back as `pending`; if the
    scheduler dies first, the sweep finds them when the lease runs out, as it finds a message
    the broker lost. A message found later than the catch-up window is recorded as skipped,
    never dropped.
    """
    plan = TickPlan(rows=[], advances=[], dropped=[], dead=[])
    # Loop invariants hoisted: this runs once per due message, 100,000 times in a big wave.
    on_time_since = now - policy.catch_up_window
    lease_until = now + policy.queue_lease
    send_time = policy.send_time
    for schedule in due:
        row_id = ledger_id(schedule.user_id, schedule.kind, schedule.occasion_date)
        try:
            kind = KINDS.get(schedule.kind)
            if kind is None:
                raise UnplannableError(f"kind {schedule.kind!r} is not registered")
            zone = _planning_zone(schedule.timezone, schedule.timezone_offset_minutes)
            anchor = kind.anchor(
                PlanningFacts(schedule.date_of_birth, zone, schedule.anniversary_date)
            )
            if anchor is None:
                plan.dropped.append((schedule.user_id, schedule.kind))
                continue
            following = occurrence_in_year(
                anchor,
                zone,
                schedule.send_local_time or send_time,
                schedule.occasion_date.year + 1,
            )
        except Exception as exc:  # one bad row is isolated; the rest of the batch goes on
            plan.dropped.append((schedule.user_id, schedule.kind))
            plan.dead.append((_row(schedule, row_id, MessageStatus.DEAD, None), _reason(exc)))
            continue
        late = schedule.next_fire_at < on_time_since
        plan.rows.append(
            _row(
                schedule,
                row_id,
                MessageStatus.SKIPPED if late else MessageStatus.QUEUED,
                None if late else lease_until,
            )
        )
        plan.advances.append(
            schedules.ScheduleAdvance(
                schedule.user_id, schedule.kind, following.instant, following.local_date
            )
        )
    return plan


class UnplannableError(Exception):
    """An occasion whose instants cannot be computed on this host."""


def _planning_zone(timezone: str | None, offset_minutes: int | None) -> tzinfo:
    try:
        return _zone(timezone, offset_minutes)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        what = f"time zone {timezone!r}" if timezone else f"UTC offset {offset_minutes} min"
        raise UnplannableError(f"{what} is not available on this host") from exc


def _reason(exc: Exception) -> str:
    detail = str(exc) if isinstance(exc, UnplannableError) else type(exc).__name__
    return f"cannot be planned: {detail}"


def _row(
    schedule: schedules.DueSchedule,
    row_id: uuid.UUID,
    status: MessageStatus,
    lease_until: datetime | None,
) -> planned.NewLedgerRow:
    return planned.NewLedgerRow(
        id=row_id,
        user_id=schedule.user_id,
        kind=schedule.kind,
        occasion_date=schedule.occasion_date,
        status=status,
        scheduled_at=schedule.next_fire_at,
        lease_until=lease_until,
    )
