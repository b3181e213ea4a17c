"""Deletes and edits through the API, and what the scheduler does with them afterwards.

On real PostgreSQL and on SQLite. The FakeClock drives the API's `now`; each tick is given its
own. What the queue carries is read back by consuming it.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select, update

from birthday_scheduler.entrypoints import runtime
from birthday_scheduler.infra.broker.base import MAIN_QUEUE
from birthday_scheduler.infra.db import unit_of_work
from birthday_scheduler.messages.models import MessageLog, MessageSchedule, MessageStatus
from birthday_scheduler.messages.scheduler import Scheduler
from support import FakeClock, drain_queue, user_body

SEND = datetime(2026, 7, 1, 9, 0, tzinfo=UTC)  # 09:00 on 1 July at UTC+0
EVE = datetime(2026, 6, 30, 12, 0, tzinfo=UTC)


@pytest.fixture
def scheduler(resources: runtime.Resources) -> Scheduler:
    return runtime.build_scheduler(resources, "test-replanning")


async def ledger(resources: runtime.Resources, user_id: str) -> list[MessageLog]:
    async with resources.sessions() as session:
        rows = await session.execute(
            select(MessageLog)
            .where(MessageLog.user_id == uuid.UUID(user_id))
            .order_by(MessageLog.occasion_date, MessageLog.created_at)
        )
        return list(rows.scalars())


async def schedules(resources: runtime.Resources, user_id: str) -> list[tuple[date, datetime]]:
    async with resources.sessions() as session:
        rows = await session.execute(
            select(MessageSchedule.occasion_date, MessageSchedule.next_fire_at).where(
                MessageSchedule.user_id == uuid.UUID(user_id)
            )
        )
        return [(occasion, fire) for occasion, fire in rows.all()]


async def create(client: httpx.AsyncClient, **overrides: object) -> str:
    body = user_body(dateOfBirth="1990-07-01", **overrides)
    response = await client.post("/users", json=body)
    assert response.status_code == 201, response.text
    user_id: str = response.json()["id"]
    return user_id


async def patch(client: httpx.AsyncClient, user_id: str, **fields: object) -> dict[str, object]:
    response = await client.patch(f"/users/{user_id}", json=fields)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


# --- delete ---------------------------------------------------------------------------------


async def test_deleting_a_user_cancels_its_pending_message(
    client: httpx.AsyncClient,
    resources: runtime.Resources,
    scheduler: Scheduler,
    clock: FakeClock,
) -> None:
    clock.set(EVE)
    user_id = await create(client)
    broker = resources.require_broker()
    await broker.close()  # the publish fails, so the row stays `pending`
    assert (await scheduler.tick(SEND)).planned == 1
    assert [r.status for r in await ledger(resources, user_id)] == ["pending"]
    await broker.start()

    clock.set(SEND + timedelta(seconds=5))
    assert (await client.delete(f"/users/{user_id}")).status_code == 204

    [row] = await ledger(resources, user_id)
    assert row.status == MessageStatus.CANCELLED
    assert row.lease_until is None
    assert await schedules(resources, user_id) == []
    # Neither the sweep (past the grace and the lease) nor next year's tick publishes anything.
    for later in (timedelta(minutes=1), timedelta(hours=1), timedelta(days=366)):
        report = await scheduler.tick(SEND + later)
        assert (report.planned, report.republished) == (0, 0)
    assert await broker.queue_depth(MAIN_QUEUE) == 0
    assert [r.status for r in await ledger(resources, user_id)] == ["cancelled"]


async def test_deleting_a_user_with_a_queued_message_cancels_it_too(
    client: httpx.AsyncClient,
    resources: runtime.Resources,
    scheduler: Scheduler,
    clock: FakeClock,
) -> None:
    clock.set(EVE)
    user_id = await create(client)
    await scheduler.tick(SEND)
    [row] = await ledger(resources, user_id)
    assert row.status == MessageStatus.QUEUED
    await drain_queue(resources.require_broker())

    clock.set(SEND + timedelta(seconds=5))
    assert (await client.delete(f"/users/{user_id}")).status_code == 204

    assert [r.status for r in await ledger(resources, user_id)] == ["cancelled"]
    # The queued copy's lease runs out; a cancelled row is not swept back into the queue.
    report = await scheduler.tick(SEND + resources.lease * 2)
    assert report.republished == 0
    assert await resources.require_broker().queue_depth(MAIN_QUEUE) == 0


async def test_deleting_before_the_birthday_plans_nothing(
    client: httpx.AsyncClient,
    resources: runtime.Resources,
    scheduler: Scheduler,
    clock: FakeClock,
) -> None:
    clock.set(EVE)
    user_id = await create(client)
    assert (await client.delete(f"/users/{user_id}")).status_code == 204
    assert (await scheduler.tick(SEND + timedelta(hours=1))).planned == 0
    assert await ledger(resources, user_id) == []
    assert await resources.require_broker().queue_depth(MAIN_QUEUE) == 0


# --- edits ----------------------------------------------------------------------------------


async def test_changing_the_birthday_replans_and_cancels_the_unsent_row(
    client: httpx.AsyncClient,
    resources: runtime.Resources,
    scheduler: Scheduler,
    clock: FakeClock,
) -> None:
    clock.set(EVE)
    user_id = await create(client)
    await scheduler.tick(SEND)
    [first] = await ledger(resources, user_id)
    assert first.status == MessageStatus.QUEUED
    await drain_queue(resources.require_broker())

    clock.set(SEND + timedelta(minutes=1))
    # An edit that touches neither the birthday nor the zone leaves the plan alone.
    assert (await patch(client, user_id, firstName="Grace"))["nextMessageAt"] == (
        "2027-07-01T09:00:00Z"
    )
    assert [r.status for r in await ledger(resources, user_id)] == ["queued"]

    changed = await patch(client, user_id, dateOfBirth="1990-08-01")

    assert changed["nextMessageAt"] == "2026-08-01T09:00:00Z"
    [first] = await ledger(resources, user_id)
    assert first.status == MessageStatus.CANCELLED
    assert await schedules(resources, user_id) == [
        (date(2026, 8, 1), datetime(2026, 8, 1, 9, tzinfo=UTC))
    ]
    # Nothing fires at the old date any more; the new one fires on the new date.
    assert (await scheduler.tick(SEND + timedelta(hours=1))).planned == 0
    assert (await scheduler.tick(datetime(2026, 8, 1, 9, tzinfo=UTC))).planned == 1
    rows = await ledger(resources, user_id)
    assert [(r.occasion_date, r.status) for r in rows] == [
        (date(2026, 7, 1), "cancelled"),
        (date(2026, 8, 1), "queued"),
    ]
    assert await drain_queue(resources.require_broker()) == [rows[1].id]


async def test_changing_the_zone_before_the_send_moves_the_instant(
    client: httpx.AsyncClient,
    resources: runtime.Resources,
    scheduler: Scheduler,
    clock: FakeClock,
) -> None:
    clock.set(EVE)
    user_id = await create(client)

    moved = await patch(client, user_id, timezone="Asia/Tokyo")

    assert moved["nextMessageAt"] == "2026-07-01T00:00:00Z"  # 09:00 at +09:00
    tokyo_send = datetime(2026, 7, 1, 0, 0, tzinfo=UTC)
    assert (await scheduler.tick(tokyo_send - timedelta(seconds=1))).planned == 0
    assert (await scheduler.tick(tokyo_send)).planned == 1
    [row] = await ledger(resources, user_id)
    assert (row.occasion_date, row.scheduled_at) == (date(2026, 7, 1), tokyo_send)
    # The old UTC instant no longer plans anything.
    assert (await scheduler.tick(SEND)).planned == 0


async def test_a_message_sent_this_year_is_not_planned_again_that_year(
    client: httpx.AsyncClient,
    resources: runtime.Resources,
    scheduler: Scheduler,
    clock: FakeClock,
) -> None:
    clock.set(EVE)
    user_id = await create(client)
    await scheduler.tick(SEND)
    [row] = await ledger(resources, user_id)
    await drain_queue(resources.require_broker())
    async with unit_of_work(resources.sessions) as session:  # what the worker records
        await session.execute(
            update(MessageLog)
            .where(MessageLog.id == row.id)
            .values(status=MessageStatus.SENT.value, sent_at=SEND, lease_until=None)
        )

    clock.set(SEND + timedelta(hours=1))
    # A later birthday this year, then a zone where today's 09:00 is still ahead: either would
    # plan a 2026 message, but 2026's was sent.
    later = await patch(client, user_id, dateOfBirth="1990-08-01")
    assert later["nextMessageAt"] == "2027-08-01T09:00:00Z"
    back = await patch(client, user_id, dateOfBirth="1990-07-01", timezoneOffset=-300)
    assert back["nextMessageAt"] == "2027-07-01T14:00:00Z"

    for instant in (datetime(2026, 7, 1, 14, tzinfo=UTC), datetime(2026, 8, 1, 9, tzinfo=UTC)):
        assert (await scheduler.tick(instant)).planned == 0
    assert [(r.occasion_date, r.status) for r in await ledger(resources, user_id)] == [
        (date(2026, 7, 1), "sent")
    ]
    assert await resources.require_broker().queue_depth(MAIN_QUEUE) == 0


async def test_user_created_after_todays_send_instant_gets_next_years(
    client: httpx.AsyncClient,
    resources: runtime.Resources,
    scheduler: Scheduler,
    clock: FakeClock,
) -> None:
    clock.set(SEND + timedelta(seconds=1))
    user_id = await create(client)

    fetched = (await client.get(f"/users/{user_id}")).json()
    assert fetched["nextMessageAt"] == "2027-07-01T09:00:00Z"
    # No back-dated send, even though a tick now is well inside the catch-up window.
    assert (await scheduler.tick(SEND + timedelta(minutes=5))).planned == 0
    assert await ledger(resources, user_id) == []
    assert await schedules(resources, user_id) == [
        (date(2027, 7, 1), datetime(2027, 7, 1, 9, tzinfo=UTC))
    ]


async def test_changing_the_zone_back_the_same_day_revives_the_cancelled_row(
    client: httpx.AsyncClient,
    resources: runtime.Resources,
    scheduler: Scheduler,
    clock: FakeClock,
) -> None:
    clock.set(EVE)
    user_id = await create(client, timezoneOffset=120)  # 09:00 at +02:00 is 07:00Z
    first_send = datetime(2026, 7, 1, 7, 0, tzinfo=UTC)
    await scheduler.tick(first_send)
    [original] = await ledger(resources, user_id)
    assert original.status == MessageStatus.QUEUED
    await drain_queue(resources.require_broker())

    # Moved west, where 1 July's 09:00 is still ahead: same occasion date, later instant.
    clock.set(first_send + timedelta(minutes=30))
    west = await patch(client, user_id, timezoneOffset=-300)
    assert west["nextMessageAt"] == "2026-07-01T14:00:00Z"
    # ... and back towards the original zone the same morning.
    clock.set(first_send + timedelta(hours=1))
    back = await patch(client, user_id, timezoneOffset=0)
    assert back["nextMessageAt"] == "2026-07-01T09:00:00Z"
    [cancelled] = await ledger(resources, user_id)
    assert cancelled.status == MessageStatus.CANCELLED

    report = await scheduler.tick(SEND)

    assert report.planned == 1  # not a unique-constraint failure
    [revived] = await ledger(resources, user_id)
    assert revived.id == original.id  # same row, same idempotency key
    assert revived.idempotency_key == original.idempotency_key
    assert revived.status == MessageStatus.QUEUED
    assert revived.scheduled_at == SEND
    assert revived.not_before == SEND  # the new instant, not the old one
    assert revived.attempts == 0
    assert await drain_queue(resources.require_broker()) == [original.id]
