"""The scheduler against real databases: exactly-once planning, catch-up, publish recovery.

Time is a FakeClock and every tick is given its `now`; the broker is the in-process queue, and
what it carries is read back by consuming it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from datetime import UTC, date, datetime, timedelta

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select, update

from birthday_scheduler.entrypoints import runtime
from birthday_scheduler.infra.broker.base import MAIN_QUEUE
from birthday_scheduler.infra.broker.memory import MemoryBroker
from birthday_scheduler.infra.db import unit_of_work
from birthday_scheduler.messages import schedules
from birthday_scheduler.messages.ledger import claims, planned, publishing
from birthday_scheduler.messages.models import MessageLog, MessageSchedule, MessageStatus
from birthday_scheduler.messages.planning import ledger_id, plan_due
from birthday_scheduler.messages.scheduler import Scheduler
from birthday_scheduler.settings import Settings
from support import FakeClock, drain_queue, user_body

BIRTHDAY = date(1990, 7, 1)
SEND = datetime(2026, 7, 1, 9, 0, tzinfo=UTC)  # 09:00 on 1 July at UTC+0
GRACE = runtime.PUBLISH_GRACE


async def ledger(resources: runtime.Resources, user_id: str | uuid.UUID) -> list[MessageLog]:
    async with resources.sessions() as session:
        rows = await session.execute(
            select(MessageLog)
            .where(MessageLog.user_id == uuid.UUID(str(user_id)))
            .order_by(MessageLog.occasion_date, MessageLog.kind)
        )
        return list(rows.scalars())


async def create_user(client: httpx.AsyncClient, **overrides: object) -> dict[str, object]:
    response = await client.post(
        "/users", json=user_body(dateOfBirth=BIRTHDAY.isoformat(), **overrides)
    )
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


async def mark_sent(resources: runtime.Resources, row_id: uuid.UUID, at: datetime) -> None:
    """What a worker records after a successful send."""
    async with unit_of_work(resources.sessions) as session:
        await session.execute(
            update(MessageLog)
            .where(MessageLog.id == row_id)
            .values(status=MessageStatus.SENT.value, sent_at=at, lease_until=None)
        )


def skipped_total() -> float:
    value = REGISTRY.get_sample_value("messages_processed_total", {"outcome": "skipped"})
    return value or 0.0


@pytest.fixture
def scheduler(resources: runtime.Resources) -> Scheduler:
    return runtime.build_scheduler(resources, "test-scheduler")


# --- several replicas ------------------------------------------------------------------------

DUE_USERS = 10_000
WAVE_DATE = date(2026, 6, 15)
# The last of the wave is the UTC-12:00 user at 21:00Z; the first the UTC+14:00 one at 19:00Z
# the day before, well inside the catch-up window.
WAVE_NOW = datetime(2026, 6, 15, 21, 0, 1, tzinfo=UTC)


async def load_due_users(url: str, count: int) -> None:
    """Users born on 15 June in every whole-hour zone, with schedules for this year's wave."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            """
            INSERT INTO users (id, first_name, last_name, email, date_of_birth,
                               timezone_offset_minutes, created_at, updated_at)
            SELECT gen_random_uuid(), 'Load', 'User ' || i, 'load-' || i || '@example.com',
                   date '1990-06-15', ((i % 27) - 12) * 60,
                   timestamptz '2026-01-01 00:00Z', timestamptz '2026-01-01 00:00Z'
            FROM generate_series(1, $1::int) AS i
            """,
            count,
        )
        await conn.execute(
            """
            INSERT INTO message_schedules (user_id, kind, next_fire_at, occasion_date)
            SELECT id, 'birthday',
                   timestamptz '2026-06-15 09:00Z'
                       - make_interval(mins => timezone_offset_minutes),
                   date '2026-06-15'
            FROM users
            """
        )
    finally:
        await conn.close()


@pytest.fixture
async def three_schedulers(
    pg_database_url: str,
) -> AsyncIterator[list[tuple[Scheduler, MemoryBroker]]]:
    """Three replicas on one PostgreSQL database, each with its own engine and queue."""
    await load_due_users(pg_database_url, DUE_USERS)
    clock = FakeClock(WAVE_NOW)
    # Small batches, so the replicas interleave many transactions over the same rows.
    settings = Settings(database_url=pg_database_url, scheduler_batch_size=250)
    async with AsyncExitStack() as stack:
        replicas = []
        for n in range(3):
            broker = MemoryBroker()
            opened = await stack.enter_async_context(
                runtime.open_resources(settings, broker=broker, clock=clock)
            )
            replicas.append((runtime.build_scheduler(opened, f"replica-{n}"), broker))
        yield replicas


@pytest.mark.postgres
async def test_three_schedulers_plan_and_publish_each_due_user_exactly_once(
    three_schedulers: list[tuple[Scheduler, MemoryBroker]],
) -> None:
    schedulers = [scheduler for scheduler, _ in three_schedulers]
    reports = await asyncio.gather(*(s.tick(WAVE_NOW) for s in schedulers))

    assert sum(r.planned for r in reports) == DUE_USERS
    assert sum(r.skipped for r in reports) == 0
    # Nothing was stale at WAVE_NOW: every row was freshly published by its planner.
    assert sum(r.republished for r in reports) == 0
    published = [i for _, broker in three_schedulers for i in await drain_queue(broker)]
    # No duplicates at all: a schedule row is planned by whichever replica locked it, and
    # a ledger row is only published by the replica whose insert created it.
    assert len(published) == DUE_USERS
    assert len(set(published)) == DUE_USERS

    async with schedulers[0].sessions() as session:
        rows = (await session.execute(select(MessageLog.id, MessageLog.status))).all()
        schedules = (
            await session.execute(
                select(MessageSchedule.occasion_date, func.count()).group_by(
                    MessageSchedule.occasion_date
                )
            )
        ).all()
    assert len(rows) == DUE_USERS
    assert {row_id for row_id, _ in rows} == set(published)
    assert {status for _, status in rows} == {MessageStatus.QUEUED}
    assert schedules == [(date(2027, 6, 15), DUE_USERS)]

    # Another round at the same instant finds nothing to do.
    again = await asyncio.gather(*(s.tick(WAVE_NOW) for s in schedulers))
    assert [(r.planned, r.republished) for r in again] == [(0, 0)] * 3
    assert [await broker.queue_depth(MAIN_QUEUE) for _, broker in three_schedulers] == [0] * 3


# --- downtime -------------------------------------------------------------------------------


async def test_stopped_scheduler_catches_up_on_restart(
    client: httpx.AsyncClient,
    resources: runtime.Resources,
    scheduler: Scheduler,
    clock: FakeClock,
) -> None:
    clock.set(datetime(2026, 6, 30, 12, tzinfo=UTC))
    user = await create_user(client)
    assert user["nextMessageAt"] == "2026-07-01T09:00:00Z"
    # The last tick before the outage, a second before the send time: nothing yet.
    assert (await scheduler.tick(SEND - timedelta(seconds=1))).planned == 0

    # The scheduler comes back 35 hours later.
    restart = SEND + timedelta(hours=35)
    clock.set(restart)
    report = await scheduler.tick(restart)

    assert (report.planned, report.skipped) == (1, 0)
    [row] = await ledger(resources, str(user["id"]))
    assert row.id == ledger_id(uuid.UUID(str(user["id"])), "birthday", date(2026, 7, 1))
    assert row.status == MessageStatus.QUEUED
    assert row.scheduled_at == SEND  # still the birthday's instant, not the restart's
    assert row.not_before == SEND
    assert await drain_queue(resources.require_broker()) == [row.id]
    fetched = await client.get(f"/users/{user['id']}")
    assert fetched.json()["nextMessageAt"] == "2027-07-01T09:00:00Z"


async def test_message_past_the_window_is_skipped_and_counted(
    client: httpx.AsyncClient,
    resources: runtime.Resources,
    scheduler: Scheduler,
    clock: FakeClock,
) -> None:
    clock.set(datetime(2026, 6, 30, 12, tzinfo=UTC))
    user = await create_user(client)
    window = timedelta(hours=resources.settings.catch_up_window_hours)
    before = skipped_total()

    report = await scheduler.tick(SEND + window + timedelta(seconds=1))

    assert (report.planned, report.skipped) == (0, 1)
    assert skipped_total() == before + 1
    [row] = await ledger(resources, str(user["id"]))
    assert row.status == MessageStatus.SKIPPED
    assert row.lease_until is None
    assert await resources.require_broker().queue_depth(MAIN_QUEUE) == 0
    # Recorded, finished, and never swept up for publishing later.
    later = await scheduler.tick(SEND + window + resources.lease * 2)
    assert (later.planned, later.republished) == (0, 0)
    assert [r.status for r in await ledger(resources, str(user["id"]))] == ["skipped"]
    assert skipped_total() == before + 1


# --- publish after commit, and the sweep ------------------------------------------------------


async def test_failed_publish_leaves_rows_pending_until_the_sweep_publishes_them(
    client: httpx.AsyncClient,
    resources: runtime.Resources,
    scheduler: Scheduler,
    clock: FakeClock,
) -> None:
    clock.set(datetime(2026, 6, 30, 12, tzinfo=UTC))
    user = await create_user(client)
    broker = resources.require_broker()
    await broker.close()  # the queue is down: publish raises BrokerError

    report = await scheduler.tick(SEND)

    assert report.planned == 1
    [row] = await ledger(resources, str(user["id"]))
    assert row.status == MessageStatus.PENDING  # committed, not published
    assert row.lease_until == SEND + GRACE
    await broker.start()
    # Within the publish grace the row is presumed still in its publisher's hands.
    assert (await scheduler.tick(SEND + GRACE - timedelta(seconds=1))).republished == 0
    assert await broker.queue_depth(MAIN_QUEUE) == 0

    sweep_at = SEND + GRACE
    assert (await scheduler.tick(sweep_at)).republished == 1

    [row] = await ledger(resources, str(user["id"]))
    assert row.status == MessageStatus.QUEUED
    assert row.lease_until == sweep_at + resources.lease
    assert await drain_queue(broker) == [row.id]


class _StalledBroker(MemoryBroker):
    """A queue whose publish never returns: the scheduler is killed while it waits."""

    def __init__(self) -> None:
        super().__init__()
        self.publishing = asyncio.Event()

    async def publish(self, message_ids: Sequence[uuid.UUID]) -> None:
        self.publishing.set()
        await asyncio.Event().wait()


async def test_rows_of_a_scheduler_killed_before_its_publish_are_swept_after_the_lease(
    client: httpx.AsyncClient, resources: runtime.Resources, clock: FakeClock
) -> None:
    """Planned rows are committed `queued`; the publish that follows is the only other step.
    A scheduler that dies in between leaves them to the sweep, exactly like a message the
    broker lost: published again once the queue lease runs out, once."""
    clock.set(datetime(2026, 6, 30, 12, tzinfo=UTC))
    user = await create_user(client)
    stalled = _StalledBroker()
    doomed = dataclasses.replace(runtime.build_scheduler(resources, "doomed"), broker=stalled)
    tick = asyncio.create_task(doomed.tick(SEND))
    await asyncio.wait_for(stalled.publishing.wait(), timeout=10)
    tick.cancel()  # killed mid-publish: the transaction had committed, the publish never came
    with contextlib.suppress(asyncio.CancelledError):
        await tick

    [row] = await ledger(resources, str(user["id"]))
    assert row.status == MessageStatus.QUEUED
    assert row.lease_until == SEND + resources.lease
    survivor = runtime.build_scheduler(resources, "survivor")
    broker = resources.require_broker()
    assert (await survivor.tick(SEND + resources.lease - timedelta(seconds=1))).republished == 0
    assert await broker.queue_depth(MAIN_QUEUE) == 0

    swept_at = SEND + resources.lease
    report = await survivor.tick(swept_at)

    assert (report.planned, report.republished) == (0, 1)
    assert await drain_queue(broker) == [row.id]
    [row] = await ledger(resources, str(user["id"]))
    assert (row.status, row.lease_until) == (MessageStatus.QUEUED, swept_at + resources.lease)


async def test_a_failed_publish_hands_back_only_rows_nobody_touched_since(
    client: httpx.AsyncClient, resources: runtime.Resources, scheduler: Scheduler
) -> None:
    """A worker may take a row from the part of a batch that was published before the rest
    failed; handing the batch back as `pending` must leave that row as the worker left it."""
    first = await create_user(client, email="first@example.com")
    second = await create_user(client, email="second@example.com")
    written = await plan_without_publishing(resources, scheduler, SEND)
    taken, untouched = (
        next(row_id for row_id, user_id in written if user_id == user["id"])
        for user in (first, second)
    )
    worker_at = SEND + timedelta(milliseconds=20)
    async with unit_of_work(resources.sessions) as session:
        assert await claims.claim_for_sending(
            session, taken, worker_at, resources.lease, SEND - timedelta(hours=1)
        )

    async with unit_of_work(resources.sessions) as session:
        await publishing.release_unpublished(session, [taken, untouched], SEND, GRACE)

    [taken_row] = await ledger(resources, str(first["id"]))
    [untouched_row] = await ledger(resources, str(second["id"]))
    assert (taken_row.status, taken_row.lease_until) == (
        MessageStatus.SENDING,
        worker_at + resources.lease,
    )
    assert (untouched_row.status, untouched_row.lease_until) == (
        MessageStatus.PENDING,
        SEND + GRACE,
    )


async def plan_without_publishing(
    resources: runtime.Resources, scheduler: Scheduler, now: datetime
) -> list[tuple[uuid.UUID, str]]:
    """What a tick writes before its publish: (ledger id, user id) of each planned row."""
    async with unit_of_work(resources.sessions) as session:
        due = await schedules.claim_due_schedules(session, now, 100)
        plan = plan_due(due, scheduler.policy, now)
        await planned.write_tick_plan(session, plan.rows, plan.advances, now)
    return [(row.id, str(row.user_id)) for row in plan.rows]


async def test_queued_row_whose_lease_passed_is_published_again_once(
    client: httpx.AsyncClient,
    resources: runtime.Resources,
    scheduler: Scheduler,
    clock: FakeClock,
) -> None:
    clock.set(datetime(2026, 6, 30, 12, tzinfo=UTC))
    user = await create_user(client)
    broker = resources.require_broker()
    await scheduler.tick(SEND)
    [row] = await ledger(resources, str(user["id"]))
    assert row.status == MessageStatus.QUEUED
    assert await drain_queue(broker) == [row.id]  # ... and the broker then loses it

    assert (await scheduler.tick(SEND + resources.lease - timedelta(seconds=1))).republished == 0
    lost_at = SEND + resources.lease
    assert (await scheduler.tick(lost_at)).republished == 1
    assert await drain_queue(broker) == [row.id]

    [row] = await ledger(resources, str(user["id"]))
    assert row.status == MessageStatus.QUEUED
    # The queue holds it again for a whole lease: not re-published every publish grace.
    assert row.lease_until == lost_at + resources.lease
    assert (await scheduler.tick(lost_at + GRACE + timedelta(seconds=1))).republished == 0
    assert await broker.queue_depth(MAIN_QUEUE) == 0


async def test_sending_row_whose_lease_passed_is_handed_back_as_queued(
    client: httpx.AsyncClient,
    resources: runtime.Resources,
    scheduler: Scheduler,
    clock: FakeClock,
) -> None:
    clock.set(datetime(2026, 6, 30, 12, tzinfo=UTC))
    user = await create_user(client)
    broker = resources.require_broker()
    await scheduler.tick(SEND)
    [row] = await ledger(resources, str(user["id"]))
    await drain_queue(broker)
    # A worker claims it the way workers do, then dies mid-send.
    claimed_at = SEND + timedelta(seconds=2)
    async with unit_of_work(resources.sessions) as session:
        claimed = await claims.claim_for_sending(
            session, row.id, claimed_at, resources.lease, SEND - timedelta(hours=1)
        )
    assert claimed is not None
    assert claimed.attempts == 1

    early = claimed_at + resources.lease - timedelta(seconds=1)
    assert (await scheduler.tick(early)).republished == 0
    assert (await ledger(resources, str(user["id"])))[0].status == MessageStatus.SENDING

    expired = claimed_at + resources.lease
    assert (await scheduler.tick(expired)).republished == 1
    [row] = await ledger(resources, str(user["id"]))
    assert row.status == MessageStatus.QUEUED
    assert row.attempts == 1  # the lost attempt still counts towards the limit
    assert row.lease_until == expired + resources.lease
    assert await drain_queue(broker) == [row.id]


# --- a second kind --------------------------------------------------------------------------


async def test_a_new_kind_is_planned_and_published_by_the_same_scheduler(
    client: httpx.AsyncClient,
    resources: runtime.Resources,
    scheduler: Scheduler,
    clock: FakeClock,
) -> None:
    clock.set(datetime(2026, 6, 30, 12, tzinfo=UTC))
    user = await create_user(client, anniversaryDate="2015-09-12")
    assert user["nextMessageAt"] == "2026-07-01T09:00:00Z"  # the earlier of the two kinds
    assert user["nextMessages"] == [
        {"kind": "birthday", "at": "2026-07-01T09:00:00Z"},
        {"kind": "anniversary", "at": "2026-09-12T09:00:00Z"},
    ]

    assert (await scheduler.tick(SEND)).planned == 1
    [birthday] = await ledger(resources, str(user["id"]))
    assert await drain_queue(resources.require_broker()) == [birthday.id]
    await mark_sent(resources, birthday.id, SEND)  # as the worker would

    anniversary_at = datetime(2026, 9, 12, 9, tzinfo=UTC)
    report = await scheduler.tick(anniversary_at)

    assert (report.planned, report.republished) == (1, 0)
    rows = await ledger(resources, str(user["id"]))
    assert [(r.kind, r.occasion_date, r.status) for r in rows] == [
        ("birthday", date(2026, 7, 1), "sent"),
        ("anniversary", date(2026, 9, 12), "queued"),
    ]
    assert rows[1].id == ledger_id(uuid.UUID(str(user["id"])), "anniversary", date(2026, 9, 12))
    assert await drain_queue(resources.require_broker()) == [rows[1].id]
    fetched = await client.get(f"/users/{user['id']}")
    assert fetched.json()["nextMessageAt"] == "2027-07-01T09:00:00Z"


async def test_ledger_status_change_outside_the_scheduler_is_respected(
    client: httpx.AsyncClient,
    resources: runtime.Resources,
    scheduler: Scheduler,
    clock: FakeClock,
) -> None:
    """A row a worker finished is never touched by later ticks, however late they come."""
    clock.set(datetime(2026, 6, 30, 12, tzinfo=UTC))
    user = await create_user(client)
    await scheduler.tick(SEND)
    [row] = await ledger(resources, str(user["id"]))
    await drain_queue(resources.require_broker())
    await mark_sent(resources, row.id, SEND)
    for late in (timedelta(hours=1), timedelta(days=2), timedelta(days=30)):
        report = await scheduler.tick(SEND + late)
        assert (report.planned, report.republished) == (0, 0)
    assert [r.status for r in await ledger(resources, str(user["id"]))] == ["sent"]
    assert await resources.require_broker().queue_depth(MAIN_QUEUE) == 0


# --- batch sizes the settings allow -----------------------------------------------------------


async def test_a_batch_larger_than_the_bind_parameter_limit_is_written(
    client: httpx.AsyncClient, resources: runtime.Resources, clock: FakeClock
) -> None:
    """SCHEDULER_BATCH_SIZE goes up to 100,000; the drivers take at most 32,767 parameters."""
    clock.set(datetime(2026, 6, 30, 12, tzinfo=UTC))
    user_id = uuid.UUID(str((await create_user(client))["id"]))
    # 3,000 rows of 12 columns and 40,000 ids: both past the limit if sent as one parameter each.
    rows = [
        planned.NewLedgerRow(
            id=ledger_id(user_id, "birthday", occasion),
            user_id=user_id,
            kind="birthday",
            occasion_date=occasion,
            status=MessageStatus.PENDING,
            scheduled_at=SEND,
            lease_until=SEND + GRACE,
        )
        for occasion in (date(2026, 7, 1) + timedelta(days=n) for n in range(3_000))
    ]
    ids = [row.id for row in rows] + [uuid.uuid4() for _ in range(37_000)]
    async with unit_of_work(resources.sessions) as session:
        written = await planned.insert_ledger_rows(session, rows, SEND)
        await publishing.mark_queued(session, ids, SEND, resources.lease)

    assert len(written) == 3_000
    async with resources.sessions() as session:
        counts = await session.execute(
            select(MessageLog.status, func.count()).group_by(MessageLog.status)
        )
        assert counts.all() == [("queued", 3_000)]
