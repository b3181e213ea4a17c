"""An occasion on which a delivery attempt was made has started: edits, purges and ticks racing
an edit never give it a second message under another key. On PostgreSQL and on SQLite.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select

from birthday_scheduler.delivery.client import Outcome, SendResult
from birthday_scheduler.delivery.worker import DeliveryWorker
from birthday_scheduler.entrypoints import runtime
from birthday_scheduler.infra.db import unit_of_work
from birthday_scheduler.messages import schedules as schedules_sql
from birthday_scheduler.messages.ledger import claims, occasions, planned
from birthday_scheduler.messages.models import MessageLog, MessageSchedule, MessageStatus
from birthday_scheduler.messages.planning import plan_due
from birthday_scheduler.messages.scheduler import Scheduler
from support import FakeClock, create_user_id, drain_queue, patch_user

SEND = datetime(2026, 7, 1, 9, 0, tzinfo=UTC)  # 09:00 on 1 July at UTC+0
EVE = datetime(2026, 6, 30, 12, 0, tzinfo=UTC)


class AcceptThenTimeOut:
    """The service took the message, but its answer never came back."""

    def __init__(self) -> None:
        self.accepted: list[str] = []

    async def send(self, email: str, message: str, idempotency_key: str) -> SendResult:
        self.accepted.append(idempotency_key)
        return SendResult(Outcome.RETRYABLE, None, "timed out after 10000 ms")


@pytest.fixture
def scheduler(resources: runtime.Resources) -> Scheduler:
    return runtime.build_scheduler(resources, "test-started")


@pytest.fixture
def sender() -> AcceptThenTimeOut:
    return AcceptThenTimeOut()


@pytest.fixture
def worker(resources: runtime.Resources, sender: AcceptThenTimeOut) -> DeliveryWorker:
    return runtime.build_worker(resources, sender, runtime.build_breaker(resources))


async def ledger(resources: runtime.Resources, user_id: str) -> list[tuple[date, str, int]]:
    async with resources.sessions() as session:
        rows = await session.execute(
            select(MessageLog.occasion_date, MessageLog.status, MessageLog.attempts)
            .where(MessageLog.user_id == uuid.UUID(user_id))
            .order_by(MessageLog.occasion_date)
        )
        return [(occasion, status, attempts) for occasion, status, attempts in rows.all()]


async def attempt_once(
    resources: runtime.Resources, scheduler: Scheduler, worker: DeliveryWorker, clock: FakeClock
) -> None:
    """Plan the 1 July message and make one attempt that the service accepts but never answers."""
    clock.set(SEND)
    await scheduler.tick(SEND)
    [message_id] = await drain_queue(resources.require_broker())
    await worker.handle(message_id)


@pytest.mark.parametrize(
    "change",
    [
        {"dateOfBirth": "1990-08-01"},  # a later birthday this year
        {"timezoneOffset": -300},  # a zone where today's 09:00 is still ahead
    ],
)
async def test_an_edit_after_an_attempt_does_not_plan_the_same_year_again(
    client: httpx.AsyncClient,
    resources: runtime.Resources,
    scheduler: Scheduler,
    worker: DeliveryWorker,
    sender: AcceptThenTimeOut,
    clock: FakeClock,
    change: dict[str, object],
) -> None:
    clock.set(EVE)
    user_id = await create_user_id(client)
    await attempt_once(resources, scheduler, worker, clock)
    assert await ledger(resources, user_id) == [(date(2026, 7, 1), "failed", 1)]

    clock.set(SEND + timedelta(minutes=1))
    edited = await patch_user(client, user_id, **change)

    # The started occasion is kept (it finishes under its own key); the edit applies from 2027.
    assert str(edited["nextMessageAt"]).startswith("2027-")
    assert await ledger(resources, user_id) == [(date(2026, 7, 1), "failed", 1)]
    for instant in (datetime(2026, 7, 1, 14, tzinfo=UTC), datetime(2026, 8, 1, 9, tzinfo=UTC)):
        await scheduler.tick(instant)
    occasions = [occasion for occasion, _, _ in await ledger(resources, user_id)]
    assert occasions == [date(2026, 7, 1)]
    assert len(set(sender.accepted)) == 1


async def test_a_killed_workers_row_counts_as_started(
    client: httpx.AsyncClient,
    resources: runtime.Resources,
    scheduler: Scheduler,
    clock: FakeClock,
) -> None:
    """A row claimed by a worker that then died is handed back as `queued` with its attempt
    counted: the service may have accepted it, so it is started."""
    clock.set(EVE)
    user_id = await create_user_id(client)
    await scheduler.tick(SEND)
    [message_id] = await drain_queue(resources.require_broker())
    async with unit_of_work(resources.sessions) as session:
        assert await claims.claim_for_sending(
            session, message_id, SEND, timedelta(seconds=15), SEND - timedelta(hours=1)
        )
    # The worker is gone; the sweep takes the row back once its lease has run out.
    await scheduler.tick(SEND + timedelta(minutes=1))
    assert await ledger(resources, user_id) == [(date(2026, 7, 1), "queued", 1)]

    clock.set(SEND + timedelta(minutes=2))
    edited = await patch_user(client, user_id, dateOfBirth="1990-08-01")

    assert edited["nextMessageAt"] == "2027-08-01T09:00:00Z"
    assert await ledger(resources, user_id) == [(date(2026, 7, 1), "queued", 1)]


async def test_a_sent_year_outlives_the_retention_purge(
    client: httpx.AsyncClient,
    resources: runtime.Resources,
    scheduler: Scheduler,
    worker: DeliveryWorker,
    clock: FakeClock,
) -> None:
    clock.set(datetime(2026, 1, 1, 12, tzinfo=UTC))
    user_id = await create_user_id(client, dateOfBirth="1990-01-02")
    await scheduler.tick(datetime(2026, 1, 2, 9, tzinfo=UTC))
    [message_id] = await drain_queue(resources.require_broker())
    async with unit_of_work(resources.sessions) as session:
        claimed = await claims.claim_for_sending(
            session,
            message_id,
            datetime(2026, 1, 2, 9, tzinfo=UTC),
            timedelta(seconds=15),
            datetime(2026, 1, 2, 8, tzinfo=UTC),
        )
        assert claimed is not None
        await claims.record_outcome(
            session, message_id, 1, MessageStatus.SENT, datetime(2026, 1, 2, 9, tzinfo=UTC)
        )

    purged_at = datetime(2026, 6, 1, tzinfo=UTC)
    async with unit_of_work(resources.sessions) as session:
        assert await occasions.purge_finished(session, purged_at - timedelta(days=90), 1000) == 1
    assert await ledger(resources, user_id) == []

    clock.set(purged_at)
    edited = await patch_user(client, user_id, dateOfBirth="1990-08-01")

    assert edited["nextMessageAt"] == "2027-08-01T09:00:00Z"
    assert (await scheduler.tick(datetime(2026, 8, 1, 9, tzinfo=UTC))).planned == 0


async def test_an_edit_before_any_attempt_still_replans_the_same_year(
    client: httpx.AsyncClient,
    resources: runtime.Resources,
    scheduler: Scheduler,
    clock: FakeClock,
) -> None:
    """The rule is about attempts: a queued row nobody has tried is still cancelled and moved."""
    clock.set(EVE)
    user_id = await create_user_id(client)
    await scheduler.tick(SEND)
    await drain_queue(resources.require_broker())

    clock.set(SEND + timedelta(minutes=1))
    edited = await patch_user(client, user_id, dateOfBirth="1990-08-01")

    assert edited["nextMessageAt"] == "2026-08-01T09:00:00Z"
    assert await ledger(resources, user_id) == [(date(2026, 7, 1), "cancelled", 0)]


async def test_a_replan_waits_for_a_tick_holding_the_users_schedule(
    client: httpx.AsyncClient,
    resources: runtime.Resources,
    scheduler: Scheduler,
    clock: FakeClock,
) -> None:
    """A tick that has claimed the schedule but not yet committed, and a PATCH at that moment:
    either the PATCH sees the tick's row and cancels it, or the tick never plans the old date.
    Never both dates."""
    clock.set(SEND - timedelta(minutes=1))
    user_id = await create_user_id(client)
    now = SEND + timedelta(seconds=1)
    clock.set(now)

    async with unit_of_work(resources.sessions) as tick:
        due = await schedules_sql.claim_due_schedules(tick, now, 10)
        assert [d.user_id for d in due] == [uuid.UUID(user_id)]
        edit = asyncio.create_task(
            client.patch(f"/users/{user_id}", json={"dateOfBirth": "1990-08-01"})
        )
        # Give the PATCH every chance to run ahead of the tick's commit.
        await asyncio.wait({edit}, timeout=0.5)
        plan = plan_due(due, scheduler.policy, now)
        await planned.write_tick_plan(tick, plan.rows, plan.advances, now)
    response = await asyncio.wait_for(edit, timeout=10)
    assert response.status_code == 200, response.text

    await scheduler.tick(datetime(2026, 8, 1, 9, tzinfo=UTC))
    rows = await ledger(resources, user_id)
    live = [(occasion, status) for occasion, status, _ in rows if status != "cancelled"]
    assert live == [(date(2026, 8, 1), "queued")]
    assert response.json()["nextMessageAt"] == "2026-08-01T09:00:00Z"


async def test_a_tick_never_overwrites_a_schedule_an_edit_moved_since_it_read_it(
    client: httpx.AsyncClient,
    resources: runtime.Resources,
    scheduler: Scheduler,
    clock: FakeClock,
) -> None:
    """The advance is conditional on what the tick claimed: should an edit land between the
    tick's read and its write, the edit's plan stands."""
    clock.set(SEND - timedelta(minutes=1))
    user_id = await create_user_id(client)
    async with unit_of_work(resources.sessions) as session:
        due = await schedules_sql.claim_due_schedules(session, SEND, 10)
    edited = schedules_sql.ScheduleAdvance(
        uuid.UUID(user_id), "birthday", datetime(2026, 8, 1, 9, tzinfo=UTC), date(2026, 8, 1)
    )
    async with unit_of_work(resources.sessions) as session:
        await schedules_sql.upsert_schedule(session, edited)

    plan = plan_due(due, scheduler.policy, SEND)
    async with unit_of_work(resources.sessions) as session:
        await planned.write_tick_plan(session, plan.rows, plan.advances, SEND)

    async with resources.sessions() as session:
        stored = (
            await session.execute(
                select(MessageSchedule.next_fire_at, MessageSchedule.occasion_date).where(
                    MessageSchedule.user_id == uuid.UUID(user_id)
                )
            )
        ).one()
    assert tuple(stored) == (edited.next_fire_at, edited.occasion_date)
